"""``python -m fashion_cnn.predict`` on image files made from the fixture: as saved, inverted (dark on light),
in colour, enlarged, 16-bit; plus files that are not images."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from fashion_cnn import predict
from fashion_cnn.analysis import predict as model_predict
from fashion_cnn.checkpoints import load
from fashion_cnn.data_files import CLASSES, load_split
from tests.conftest import FIXTURE, best_checkpoint

N = 40
VARIANTS = {
    "as_is": lambda a: Image.fromarray(a),
    "inverted": lambda a: Image.fromarray(255 - a),  # the usual photo: dark object on a light background
    "colour": lambda a: Image.merge("RGB", [Image.fromarray((a * f).astype("uint8")) for f in (1.0, 0.6, 0.3)]),
    "enlarged": lambda a: Image.fromarray(a).resize((84, 84), Image.Resampling.NEAREST),
    "inverted_colour_jpeg": lambda a: Image.fromarray(255 - a).convert("RGB").resize((120, 120)),
    "sixteen_bit": lambda a: Image.fromarray(a.astype("uint16") * 257),  # mode I;16, as Pillow reads such a PNG
}


@pytest.fixture(scope="module")
def images():
    images, labels = load_split(FIXTURE, "test", verify=False)
    return images[:N], labels[:N]


@pytest.fixture(scope="module")
def image_dirs(images, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("images")
    for name, make in VARIANTS.items():
        (root / name).mkdir()
        for i, array in enumerate(images[0].numpy()):
            suffix = "jpg" if name.endswith("jpeg") else "png"
            make(array).save(root / name / f"{i:03d}.{suffix}")
    return {name: root / name for name in VARIANTS}


def test_prepare_makes_training_like_images(images):
    array = images[0][0].numpy()
    original = torch.from_numpy(array.copy()).int()
    for make in VARIANTS.values():
        prepared = predict.prepare(make(array)).int()
        assert prepared.shape == (28, 28) and prepared.dtype == torch.int32
        assert prepared[:2].float().mean() < 40  # a dark border: the object is light on black
        assert (prepared - original).abs().float().mean() < 25
    wide = predict.prepare(Image.new("L", (56, 28), 255))  # all "object": it fills the middle, black bars around
    assert (wide[:7] == 0).all() and (wide[21:] == 0).all() and (wide[7:21] == 255).all()


def test_predictions_agree_with_the_model_on_the_original_tensors(trained_run, images, image_dirs, capsys):
    ckpt = best_checkpoint(trained_run)
    loaded = load(ckpt)
    expected = [CLASSES[i] for i in model_predict(loaded.net, *images, loaded.datamodule.normalize).predicted]
    for name, directory in image_dirs.items():
        assert predict.main(["--ckpt_path", str(ckpt), "--json", "--top_k", "3", str(directory)]) == 0
        results = json.loads(capsys.readouterr().out)
        assert [r["path"] for r in results] == [str(p) for p in sorted(directory.iterdir())]
        assert all(len(r["top_k"]) == 3 and sum(c["probability"] for c in r["top_k"]) <= 1 + 1e-6 for r in results)
        agree = sum(r["top_k"][0]["class"] == e for r, e in zip(results, expected, strict=True)) / N
        assert agree >= (0.95 if name in ("as_is", "enlarged") else 0.8), (name, agree)


def test_bad_files_are_one_line_each_and_the_others_still_predicted(trained_run, image_dirs, tmp_path, capsys):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((image_dirs["enlarged"] / "000.png").read_bytes()[:60])
    good = image_dirs["as_is"] / "001.png"
    code = predict.main(["--ckpt_path", str(best_checkpoint(trained_run)), str(not_image), str(good), str(truncated),
                         str(tmp_path / "missing.png")])
    captured = capsys.readouterr()
    assert code == 1
    errors = captured.err.splitlines()
    assert len(errors) == 3 and all(line.startswith("python -m fashion_cnn.predict: error: ") for line in errors)
    assert "notes.png: not an image" in errors[0] and "cut.png" in errors[1] and "missing.png" in errors[2]
    assert "Traceback" not in captured.err
    assert captured.out.startswith(f"{good}: ") and captured.out.count("%") == 3  # the default top 3


def test_prepare_refuses_modes_without_a_known_range():
    for mode in ("I", "F"):
        with pytest.raises(ValueError, match=f"pixel mode {mode} cannot be made 8-bit grayscale"):
            predict.prepare(Image.new(mode, (28, 28)))


def test_usage_errors_exit_2(capsys):
    for argv in (["--ckpt_path", "x.ckpt"], ["--ckpt_path", "x.ckpt", "--top_k", "0", "a.png"]):
        with pytest.raises(SystemExit) as exit_info:
            predict.main(argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith("python -m fashion_cnn.predict: error: ")
