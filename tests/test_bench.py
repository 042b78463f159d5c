"""The benchmark's machinery, without its long runs: the report line, turn-taking, pairing, the project's
callback and what each JSON result records."""

from __future__ import annotations

import io
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import bare, bench, workers
from benchmarks.bench import circumstances, command, paired_ratio, summary
from benchmarks.callback import BenchWorker
from benchmarks.turns import READY, Worker, read_report, report, wait_for_turn
from fashion_cnn import config, fit
from tests.conftest import FIXTURE

ROOT = Path(__file__).resolve().parent.parent

# A stand-in worker: three "epochs" that sleep 0.1 s each and report a made-up time, waiting for their turn.
FAKE_WORKER = """
import time
from benchmarks.turns import report, wait_for_turn
for epoch in (1, 2, 3):
    wait_for_turn()
    with open("started.txt", "a") as f:
        f.write(f"{epoch}\\n")
    time.sleep(0.1)
    report(epoch=epoch, seconds=99.0, acc=0.5)
"""


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    """Starts FAKE_WORKER in tmp_path, with or without turns."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # finds benchmarks/
    return lambda turns: Worker("fake", [sys.executable, "-c", FAKE_WORKER], turns=turns, cwd=tmp_path)


def test_a_report_line_reads_back_as_written(capsys):
    report(epoch=3, seconds=6.25, acc=0.8731)
    line = capsys.readouterr().out
    assert line.startswith("BENCH ") and line.endswith("\n")
    assert read_report(line) == {"epoch": 3, "seconds": 6.25, "acc": 0.8731}
    assert read_report("[3] Test loss 0.3412, accuracy 87.31% (6.2 s)\n") is None
    assert read_report(READY + "\n") is None


def test_workers_wait_for_their_turn_and_the_benchmark_times_each_epoch(fake_worker, tmp_path):
    started = tmp_path / "started.txt"
    worker = fake_worker(turns=True)
    worker.read()  # loads, then waits for its first turn
    assert worker.alive and worker.epochs == [] and not started.exists()
    worker.run_epoch()
    assert started.read_text() == "1\n"  # one epoch ran, and the worker waits again
    worker.run_epoch()
    worker.run_epoch()
    worker.finish()
    assert [e["epoch"] for e in worker.epochs] == [1, 2, 3] and not worker.alive
    # timed from go to ready (or to the last line), not the 99 s the worker claimed
    assert all(0.1 <= e["seconds"] < 30 for e in worker.epochs)
    assert worker.peak_rss_gb > 0 and worker.wall_seconds >= 0.3


def test_without_turns_a_worker_runs_straight_through_on_its_own_clock(fake_worker, tmp_path):
    worker = fake_worker(turns=False)
    worker.finish()
    assert (tmp_path / "started.txt").read_text() == "1\n2\n3\n"
    assert [(e["epoch"], e["seconds"], e["acc"]) for e in worker.epochs] == [(1, 99.0, 0.5), (2, 99.0, 0.5),
                                                                             (3, 99.0, 0.5)]
    walls = [e["wall"] for e in worker.epochs]
    assert walls == sorted(walls) and walls[0] > 0


def test_ratios_pair_the_epochs_of_the_same_round():
    def run(*seconds: float) -> dict:
        return {"epochs": [{"seconds": s} for s in seconds], "seconds_per_epoch": sorted(seconds[1:])[1]}

    # round 3 ran 10x slower for both; in two of the three timed rounds a took twice b's time
    a, b = run(1, 2, 20, 4), run(1, 1, 10, 8)
    assert paired_ratio(a, b) == 2.0
    assert a["seconds_per_epoch"] / b["seconds_per_epoch"] == 0.5  # what unpaired medians would have said


def test_summary_skips_the_warm_up_and_finds_the_first_epoch_at_the_target():
    epochs = [{"epoch": i + 1, "seconds": s, "acc": a, "wall": w}
              for i, (s, a, w) in enumerate([(9.0, 0.80, 20.0), (5.0, 0.86, 25.0), (7.0, 0.89, 32.0),
                                             (6.0, 0.90, 38.0)])]
    worker = SimpleNamespace(name="fake", epochs=epochs, lines=[], peak_rss_gb=0.8, wall_seconds=40.0)
    result = summary(worker, target=0.885)
    assert result["seconds_per_epoch"] == 6.0 and result["peak_rss_gb"] == 0.8
    assert result["epochs_to_target"] == 3 and result["wall_to_target"] == 32.0
    assert result["epoch_seconds_to_target"] == 21.0
    assert "epochs_to_target" not in summary(worker, target=None)
    assert summary(worker, target=0.95)["epochs_to_target"] is None


def fake_trainer(epoch: int, acc: float, sanity_checking: bool = False) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, sanity_checking=sanity_checking,
                           callback_metrics={"test/acc": torch.tensor(acc), "test/loss": torch.tensor(0.3)})


def test_the_project_callback_reports_each_epoch_with_its_test_accuracy(capsys, monkeypatch):
    monkeypatch.delenv("BENCH_TURNS", raising=False)
    callback = BenchWorker()
    callback.on_validation_epoch_end(fake_trainer(0, 0.1, sanity_checking=True), None)  # before any epoch
    callback.on_train_epoch_start(fake_trainer(4, 0.0), None)
    callback.on_validation_epoch_end(fake_trainer(4, 0.875), None)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    reported = read_report(lines[0])
    assert reported["epoch"] == 5 and reported["acc"] == 0.875 and 0 <= reported["seconds"] < 5


def test_with_turns_on_the_callback_waits_for_go(capsys, monkeypatch):
    monkeypatch.setenv("BENCH_TURNS", "1")
    monkeypatch.setattr("sys.stdin", io.StringIO("go\n"))
    BenchWorker().on_train_epoch_start(fake_trainer(0, 0.0), None)
    assert capsys.readouterr().out == READY + "\n"
    with pytest.raises(SystemExit, match="went away"):  # stdin closed: the benchmark has ended
        wait_for_turn()


def test_every_variant_reports_through_the_same_protocol(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the project's log directory
    project = command("project", 6, "seed", None, str(tmp_path))
    assert "--trainer.callbacks+=benchmarks.callback.BenchWorker" in project and "--trainer.max_epochs" in project
    to_target = command("project", 40, "fast", 0.885, str(tmp_path))
    assert "--trainer.callbacks+=benchmarks.callback.BenchWorker" in to_target  # its own schedule: no max_epochs
    assert "--trainer.max_epochs" not in to_target
    for name in ("notebook", "floor", "floor_cl"):
        code = command(name, 6, "seed", 0.885, str(tmp_path))[-1]
        compile(code, name, "exec")
        assert callable(getattr(workers, name)) and f"workers.{name}(6, 0.885, " in code
    code = command("bare", 6, "seed", 0.885, str(tmp_path))[-1]
    assert callable(bare.bare) and "bare.bare(6, 0.885, " in code


@pytest.mark.parametrize("name", ["notebook", "floor", "floor_cl"])
def test_each_yardstick_trains_reports_each_epoch_and_stops_at_its_target(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BENCH_TURNS", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the notebook's copy of the raw files
    monkeypatch.setattr("fashion_cnn.data_files.OFFICIAL", {})  # the fixture is a cut: not the release's checksums
    variant = getattr(workers, name)
    variant(2, None, str(FIXTURE))  # no target: every epoch
    reports = [r for line in capsys.readouterr().out.splitlines() if (r := read_report(line))]
    assert [r["epoch"] for r in reports] == [1, 2]
    assert all(0 <= r["acc"] <= 1 and (r["acc"] * 256).is_integer() for r in reports)  # the fixture's 256 tested
    variant(3, 0.0, str(FIXTURE))  # any accuracy reaches 0: it stops after the first epoch
    reports = [r for line in capsys.readouterr().out.splitlines() if (r := read_report(line))]
    assert [r["epoch"] for r in reports] == [1]


def test_the_bare_trainer_variant_reports_each_epoch_and_stops_at_its_target(capsys, monkeypatch):
    monkeypatch.delenv("BENCH_TURNS", raising=False)
    bare.bare(3, 0.0, str(FIXTURE), verify=False)  # any accuracy reaches 0: it stops after the first epoch
    reports = [r for line in capsys.readouterr().out.splitlines() if (r := read_report(line))]
    assert [r["epoch"] for r in reports] == [1] and 0 < reports[0]["acc"] <= 1
    bare.bare(2, None, str(FIXTURE), verify=False)  # no target: every epoch
    reports = [r for line in capsys.readouterr().out.splitlines() if (r := read_report(line))]
    assert [r["epoch"] for r in reports] == [1, 2]


def test_a_real_project_run_prints_a_bench_line_per_epoch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BENCH_TURNS", raising=False)
    code = fit.main(["--data.data_dir", str(FIXTURE), "--data.verify", "false", "--data.download", "false",
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                     "--trainer.log_every_n_steps", "4", "--trainer.max_epochs", "2",
                     "--trainer.callbacks+=benchmarks.callback.BenchWorker"])
    assert code == 0
    reports = [r for line in capsys.readouterr().out.splitlines() if (r := read_report(line))]
    assert [r["epoch"] for r in reports] == [1, 2] and all(0 <= r["acc"] <= 1 for r in reports)


def test_a_result_records_what_a_citation_needs(tmp_path, monkeypatch):
    run = circumstances()
    if (bench.ROOT / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{40}", run["git_commit"]) and isinstance(run["git_dirty"], bool)
    assert run["argv"] == sys.orig_argv and torch.__version__.startswith(run["torch"])
    assert run["cpu_count"] >= 1 and len(run["load_average_start"]) == 3
    assert run["cpu_bfloat16"] in (config.cpu_has_bfloat16(), None) and "cpu" in run  # None: no /proc/cpuinfo
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", run["started"])
    monkeypatch.setattr(bench, "ROOT", tmp_path)  # outside a git checkout (an unpacked sdist, say)
    assert (circumstances()["git_commit"], circumstances()["git_dirty"]) == (None, None)


def test_net_step_times_the_configs_network_and_each_variant(capsys):
    from benchmarks import net_step

    strong = net_step.config_values("strong")  # read on top of seed.yaml, as fit reads it
    assert strong["model"]["net"]["init_args"]["widths"] == [16, 64, 128] and strong["model"]["channels_last"]
    net_step.main(["--config", "tiny", "--option", "whiten=true", "--precision", "bf16-mixed", "--steps", "1",
                   "--rounds", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tiny: batch") and "precision 32-true" in lines[0] and "2 rounds of 1 steps" in lines[0]
    assert lines[1].split()[0] == "config" and lines[1].endswith("1.000x the config's network")
    assert lines[2].split()[0] == "whiten=true" and "ms/step" in lines[2]
    assert lines[3].split()[0] == "precision=bf16-mixed" and "ms/step" in lines[3]
    with pytest.raises(SystemExit):
        net_step.main(["--option", "whiten"])


def test_net_step_compiles_its_compile_variant_only(capsys, monkeypatch):
    from benchmarks import net_step

    compiled = []  # torch.compile itself is left out: it takes half a minute here, which is what --compile measures
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: compiled.append(type(self).__name__))
    net_step.main(["--config", "tiny", "--compile", "--steps", "1", "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert compiled == ["StrongCNN"] and [line.split()[0] for line in lines[1:]] == ["config", "compile"]
    assert "(warm-up round with compiling: " in lines[2] and "compiling" not in lines[1]
