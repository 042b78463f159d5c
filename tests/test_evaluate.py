"""``python -m fashion_cnn.evaluate``: the same numbers as the training run's final test, and its outputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from fashion_cnn import evaluate
from fashion_cnn.data_files import CLASSES
from tests.helpers import FIXTURE, TRAINED_EPOCHS, best_checkpoint, fixture_cut, scalars


def test_best_checkpoint_gives_the_runs_final_test_numbers(trained_run, tmp_path, capsys):
    assert evaluate.main(["--ckpt_path", str(best_checkpoint(trained_run)), "--out_dir", str(tmp_path)]) == 0
    logged = scalars(trained_run)
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["test_acc"] == pytest.approx(logged["final/test_acc"][0], abs=1e-6)
    assert result["test_loss"] == pytest.approx(logged["final/test_loss"][0], abs=1e-6)
    assert result["num_images"] == 256 and list(result["per_class"]) == list(CLASSES)
    # which weights: the run's last epoch, 512 images in batches of 64 a step
    assert (result["checkpoint_epoch"], result["checkpoint_step"]) == (TRAINED_EPOCHS, TRAINED_EPOCHS * 512 // 64)
    assert sum(map(sum, result["confusion_matrix"])) == 256
    out = capsys.readouterr().out
    assert f"test accuracy: {100 * result['test_acc']:.2f}%" in out and f"{result['test_loss']:.4f}" in out
    assert all(name in out for name in CLASSES) and "precision" in out and "most confused" in out
    for picture in ("confusion_matrix.png", "mistakes.png"):
        with Image.open(tmp_path / picture) as image:
            assert image.width >= 600


def test_best_of_the_newest_run_writes_into_the_run_directory(trained_run, tmp_path, capsys):
    run = tmp_path / "logs" / "version_0"  # a copy: the shared run is read by other tests, in any order
    shutil.copytree(trained_run, run)
    code = evaluate.main(["--ckpt_path", "best", "--logs_dir", str(run.parent), "--data_dir", str(FIXTURE)])
    assert code == 0 and str(best_checkpoint(run)) in capsys.readouterr().out
    assert {"metrics.json", "confusion_matrix.png", "mistakes.png"} <= {p.name for p in run.iterdir()}


def test_missing_data_is_one_line(trained_run, tmp_path, capsys, no_other_copies):
    code = evaluate.main(["--ckpt_path", str(best_checkpoint(trained_run)), "--data_dir", str(tmp_path / "no"),
                          "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "error: FashionMNIST not found" in err


def test_a_data_dir_without_a_copy_is_refused_even_where_another_copy_exists(trained_run, tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(FIXTURE))  # another copy, which fit would go on to
    (tmp_path / "typo").mkdir()
    code = evaluate.main(["--ckpt_path", str(best_checkpoint(trained_run)), "--data_dir", str(tmp_path / "typo"),
                          "--out_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and f"--data_dir {tmp_path / 'typo'} holds no FashionMNIST copy" in err
    assert not (tmp_path / "out").exists()


def test_mirror_averages_each_images_logits_with_its_mirror_images(trained_run, tmp_path):
    from fashion_cnn.analysis import predictions
    from fashion_cnn.checkpoints import load

    loaded = load(best_checkpoint(trained_run))
    plain, images, _ = evaluate.predictions_on(loaded, data_dir=str(FIXTURE))
    mirrored = predictions(loaded.net, images.flip(-1), plain.labels, loaded.datamodule.normalize)
    both, _, _ = evaluate.predictions_on(loaded.with_views(mirror=True), data_dir=str(FIXTURE))
    assert torch.allclose(both.logits, (plain.logits + mirrored.logits) / 2, atol=1e-5)
    assert evaluate.main(["--ckpt_path", str(best_checkpoint(trained_run)), "--out_dir", str(tmp_path),
                          "--mirror"]) == 0
    result = json.loads((tmp_path / "metrics_mirror.json").read_text())
    assert result["mirror"] is True and result["test_acc"] == pytest.approx(both.accuracy)
    assert not (tmp_path / "metrics.json").exists()  # the plain evaluation's files are left alone


def test_a_run_that_tested_with_mirror_images_is_evaluated_the_same_way(mirror_run, tmp_path):
    from fashion_cnn.checkpoints import load
    from fashion_cnn.nets import ViewAverage

    loaded = load(mirror_run / "checkpoints" / "last.ckpt")
    assert loaded.mirrored and loaded.shift == 1 and isinstance(loaded.net, ViewAverage)
    assert evaluate.main(["--ckpt_path", str(loaded.path), "--out_dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    logged = scalars(mirror_run)
    assert result["mirror"] is True and result["shift"] == 1
    assert result["test_acc"] == pytest.approx(logged["final/test_acc"][0], abs=1e-6)
    assert result["test_loss"] == pytest.approx(logged["final/test_loss"][0], abs=1e-5)
    assert evaluate.main(["--ckpt_path", str(loaded.path), "--out_dir", str(tmp_path), "--mirror"]) == 0
    assert not (tmp_path / "metrics_mirror.json").exists()  # the run's own evaluation already is the mirrored one


def test_val_split_is_the_runs_own_held_out_images(mirror_run, tmp_path, capsys):
    from fashion_cnn.analysis import predictions
    from fashion_cnn.checkpoints import load
    from fashion_cnn.datamodule import FashionMNISTDataModule

    loaded = load(mirror_run / "checkpoints" / "last.ckpt")
    assert evaluate.main(["--ckpt_path", str(loaded.path), "--out_dir", str(tmp_path), "--split", "val"]) == 0
    result = json.loads((tmp_path / "metrics_val.json").read_text())
    assert result["split"] == "val" and result["num_images"] == 128 and "test_acc" not in result
    assert "val accuracy:" in capsys.readouterr().out and not (tmp_path / "metrics.json").exists()
    data = FashionMNISTDataModule(**{**loaded.datamodule.hparams, "data_dir": str(FIXTURE)})
    data.setup()  # the images training held out
    views = predictions(loaded.net, data.val_set.images, data.val_set.labels, data.normalize)
    assert result["val_acc"] == pytest.approx(views.accuracy, abs=1e-9)
    # per-epoch validation averaged the mirror images only (final_shift is for the final test): --shift 0 does that
    assert evaluate.main(["--ckpt_path", str(loaded.path), "--out_dir", str(tmp_path), "--split", "val",
                          "--shift", "0"]) == 0
    mirror_only = json.loads((tmp_path / "metrics_val_shift0.json").read_text())
    assert mirror_only["shift"] == 0 and mirror_only["mirror"] is True
    assert mirror_only["val_acc"] == pytest.approx(scalars(mirror_run)["val/acc"][-1], abs=1e-6)
    assert mirror_only["val_loss"] == pytest.approx(scalars(mirror_run)["val/loss"][-1], abs=1e-5)


def test_val_split_from_a_copy_of_another_size_is_one_line(mirror_run, tmp_path, capsys):
    cut = fixture_cut(tmp_path / "cut", 400)  # the run's split indices would be other images there
    out = tmp_path / "out"
    code = evaluate.main(["--ckpt_path", str(mirror_run / "checkpoints" / "last.ckpt"), "--out_dir", str(out),
                          "--split", "val", "--data_dir", str(cut)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "held its validation split out of 512 training images" in err and "has 400" in err
    assert not out.exists() or not any(out.iterdir())


def test_shift_adds_shifted_views_under_a_tag_of_its_own(trained_run, tmp_path):
    from fashion_cnn.analysis import predictions
    from fashion_cnn.checkpoints import load
    from fashion_cnn.nets import ViewAverage

    loaded = load(best_checkpoint(trained_run))
    assert loaded.shift == 0 and not loaded.mirrored
    assert evaluate.main(["--ckpt_path", str(loaded.path), "--out_dir", str(tmp_path), "--shift", "1"]) == 0
    result = json.loads((tmp_path / "metrics_shift1.json").read_text())
    plain, images, _ = evaluate.predictions_on(loaded, data_dir=str(FIXTURE))
    shifted = predictions(ViewAverage(loaded.net, mirror=False, shift=1, fill=-loaded.mean / loaded.std), images,
                      plain.labels, loaded.datamodule.normalize)
    assert result["shift"] == 1 and result["mirror"] is False
    assert result["test_acc"] == pytest.approx(shifted.accuracy, abs=1e-9) and not (tmp_path / "metrics.json").exists()


def test_val_split_of_a_run_without_one_is_one_line(trained_run, tmp_path, capsys):
    code = evaluate.main(["--ckpt_path", str(best_checkpoint(trained_run)), "--out_dir", str(tmp_path),
                          "--split", "val"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "without a validation split" in err and "--split test" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
