"""``python -m fashion_cnn.report``: a run's learning curves next to the notebook's logged numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fashion_cnn import report
from tests.helpers import TRAINED_EPOCHS, scalars, tree_digest


def test_curves_are_the_runs_logged_test_numbers(trained_run):
    epochs, loss, acc = report.logged_test_curves(trained_run)
    logged = scalars(trained_run)
    assert epochs == list(range(1, TRAINED_EPOCHS + 1)) and acc == logged["test/acc"] and loss == logged["test/loss"]


def test_newest_run_is_drawn_to_the_png(trained_run, tmp_path, capsys):
    logs = tmp_path / "logs"
    shutil.copytree(trained_run, logs / "version_3")
    (logs / "version_4").mkdir()  # newer but empty: a run that never logged
    out = tmp_path / "docs" / "curves.png"
    assert report.main(["--logs_dir", str(logs), "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > image.height >= 400
    printed = capsys.readouterr().out
    assert "version_3: 3 epochs" in printed and "notebook at epoch 18: 88.48%" in printed
    curves = json.loads(out.with_suffix(".json").read_text())  # the numbers behind the picture, for the docs
    assert curves["run"] == str(logs / "version_3") and curves["epochs"] == list(range(1, TRAINED_EPOCHS + 1))
    assert curves["test_acc"] == scalars(logs / "version_3")["test/acc"]


def test_by_default_the_curves_go_into_the_run_and_the_docs_stay_as_they_are(trained_run, tmp_path, capsys):
    run = tmp_path / "logs" / "version_0"
    shutil.copytree(trained_run, run)
    docs = Path(__file__).parent.parent / "docs"
    before = tree_digest(docs)
    assert report.main(["--run", str(run)]) == 0
    assert (run / "learning_curves.png").is_file() and (run / "learning_curves.json").is_file()
    assert tree_digest(docs) == before  # the README's committed picture is written only when asked for


def test_an_out_that_is_not_a_png_is_a_usage_error(trained_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--run", str(trained_run), "--out", str(tmp_path / "curves")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "give a .png file name" in err and err.count("\n") == 2
    assert list(tmp_path.iterdir()) == []


def test_notebook_reference_is_its_printed_table():
    assert [e for e, _, _ in report.NOTEBOOK] == list(range(1, 19))
    assert report.NOTEBOOK[0] == (1, 0.5917, 77.55) and report.NOTEBOOK[-1] == (18, 0.3190, 88.48)


def test_a_directory_without_a_run_is_one_line(tmp_path, capsys):
    assert report.main(["--run", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no TensorBoard event files" in err and not (tmp_path / "x.png").exists()


def test_a_run_that_never_read_the_test_set_is_one_line_that_says_so(tmp_path, monkeypatch, capsys):
    from fashion_cnn import fit
    from tests.helpers import SMALL

    monkeypatch.chdir(tmp_path)
    result = fit.train([*SMALL, "--trainer.max_epochs", "1", "--data.val_size", "100", "--data.test", "false"])
    capsys.readouterr()
    assert report.main(["--run", str(result.run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never read the test set (data.test: false" in err
    assert not (result.run_dir / "learning_curves.png").exists()


@pytest.mark.parametrize(("damage", "message"), [
    ({"config.yaml": "model: [\n"}, "config.yaml cannot be read"),  # cut off mid-file
    ({"config.yaml": "model: hello\n"}, "config.yaml: not a fit config"),  # a section that is no mapping
    ({"events.out.tfevents.0.host.1.0": None}, "its TensorBoard events cannot be read"),  # a directory
])
def test_a_damaged_run_is_one_line_and_nothing_is_written(trained_run, tmp_path, capsys, damage, message):
    run = tmp_path / "version_0"
    shutil.copytree(trained_run, run)
    for name, content in damage.items():
        if content is None:
            (run / name).mkdir()
        else:
            (run / name).write_text(content)
    before = tree_digest(tmp_path)
    assert report.main(["--run", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert tree_digest(tmp_path) == before


def test_the_title_names_the_runs_network(trained_run, mirror_run, tmp_path):
    assert report.network(trained_run) == "SeedCNN" and report.network(mirror_run) == "StrongCNN"
    bare = tmp_path / "version_0"
    bare.mkdir()
    assert report.network(bare) == "SeedCNN"  # no config.yaml: the notebook's network, fit's default
