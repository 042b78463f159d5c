"""What report and compare read from a run's TensorBoard events: a resumed run's (its killed attempt's events after
the checkpoint replaced, quietly), and a run logged without TensorBoard (said in so many words)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from fashion_cnn import compare, fit, report
from fashion_cnn.runs import run_scalars
from tests.helpers import SMALL, scalars

ROOT = Path(__file__).parent.parent


def _resumed_copy(trained_run: Path, run: Path) -> list[float]:
    """A copy of the trained run as a resumed run leaves it: after its events files, one that starts again at the
    end of its first epoch (fit's ``purge_step``: the checkpoint's step), with other numbers for epochs 2 and 3
    than the stopped attempt logged. Returns the test accuracies the run has now, per epoch."""
    shutil.copytree(trained_run, run)
    acc = scalars(run)["test/acc"]
    steps = [e.step for e in run_scalars(run)["test/acc"]]
    writer = SummaryWriter(str(run), purge_step=steps[0] + 1)  # as Lightning's TensorBoardLogger opens it
    for epoch, (step, value) in enumerate(zip(steps[1:], (0.75, 0.8125), strict=True), start=1):
        writer.add_scalar("epoch", epoch, step)
        writer.add_scalar("test/acc", value, step)
        writer.add_scalar("test/loss", 1 - value, step)
    writer.add_scalar("final/test_acc", 0.8125, steps[-1] + 1)
    writer.close()
    return [acc[0], 0.75, 0.8125]


def test_a_resumed_runs_numbers_are_its_resumed_attempts_read_without_a_warning(trained_run, tmp_path):
    run = tmp_path / "lightning_logs" / "version_0"
    expected = _resumed_copy(trained_run, run)
    assert len(list(run.glob("events.out.tfevents.*"))) == 3
    code = (f"import sys; from fashion_cnn import compare, report; "
            f"sys.exit(report.main(['--run', {str(run)!r}, '--out', {str(tmp_path / 'curves.png')!r}]) "
            f"or compare.main([{str(run)!r}, '--out', {str(tmp_path / 'cmp')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr  # no "Detected out of order event.step ..."
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert curves["epochs"] == [1, 2, 3] and curves["test_acc"] == expected
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())[0]["test_acc"] == 0.8125
    assert "| 81.25% |" in done.stdout


def test_a_run_logged_without_tensorboard_is_said_to_be_one(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained_run, tmp_path / "lightning_logs" / "version_0")
    result = fit.train([*SMALL, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                        "--trainer.limit_test_batches", "1", "--trainer.logger", "CSVLogger"])
    csv_run = result.run_dir
    assert result.status == 0 and csv_run == tmp_path / "lightning_logs" / "version_1"
    assert (csv_run / "metrics.csv").is_file() and not list(csv_run.glob("events.out.tfevents.*"))
    capsys.readouterr()

    assert compare.main([str(csv_run), "--out", str(tmp_path / "cmp")]) == 1
    err = capsys.readouterr().err
    assert err == (f"python -m fashion_cnn.compare: error: no finished runs in {csv_run} (1 logged with "
                   f"CSVLogger, without the TensorBoard events compare reads); name runs that reached their final "
                   f"test, logged with TensorBoardLogger (fit's default)\n")
    assert not (tmp_path / "cmp").exists()

    assert compare.main(["lightning_logs", "--out", str(tmp_path / "both")]) == 0  # beside a TensorBoard run
    table = capsys.readouterr().out
    assert "| (same config) | 1 |" in table
    assert table.split("\n\n")[1] == ("1 run(s) not in the table: logged with CSVLogger, without the TensorBoard "
                                      "events compare reads.")

    assert report.main(["--run", str(csv_run), "--out", str(tmp_path / "curves.png")]) == 1
    assert capsys.readouterr().err == (f"python -m fashion_cnn.report: error: {csv_run}: no TensorBoard event files: "
                                       f"it was logged with CSVLogger, and report reads TensorBoard events; train "
                                       f"with fit's default logger, TensorBoardLogger\n")
