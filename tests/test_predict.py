"""``python -m fashion_cnn.predict`` on image files made from the fixture: as saved, inverted (dark on light),
in colour, enlarged, 16-bit, animated; plus files that cannot be read safely (not PNG/JPEG, truncated, too many
pixels)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from fashion_cnn import predict
from fashion_cnn.analysis import predictions as model_predictions
from fashion_cnn.checkpoints import load
from fashion_cnn.data_files import CLASSES, load_split
from tests.helpers import FIXTURE, best_checkpoint

N = 40
VARIANTS = {
    "as_is": lambda a: Image.fromarray(a),
    "inverted": lambda a: Image.fromarray(255 - a),  # the usual photo: dark object on a light background
    "colour": lambda a: Image.merge("RGB", [Image.fromarray((a * f).astype("uint8")) for f in (1.0, 0.6, 0.3)]),
    "enlarged": lambda a: Image.fromarray(a).resize((84, 84), Image.Resampling.NEAREST),
    "inverted_colour_jpeg": lambda a: Image.fromarray(255 - a).convert("RGB").resize((120, 120)),
    "sixteen_bit": lambda a: Image.fromarray(a.astype("uint16") * 257),  # mode I;16, as Pillow reads such a PNG
}
ERROR = "python -m fashion_cnn.predict: error: "
ROOT = Path(__file__).parent.parent


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
    expected = [CLASSES[i] for i in model_predictions(loaded.net, *images, loaded.datamodule.normalize).predicted]
    for name, directory in image_dirs.items():
        assert predict.main(["--ckpt_path", str(ckpt), "--json", "--top_k", "3", str(directory)]) == 0
        results = json.loads(capsys.readouterr().out)
        assert [r["path"] for r in results] == [str(p) for p in sorted(directory.iterdir())]
        assert all(len(r["top_k"]) == 3 and sum(c["probability"] for c in r["top_k"]) <= 1 + 1e-6 for r in results)
        agree = sum(r["top_k"][0]["class"] == e for r, e in zip(results, expected, strict=True)) / N
        assert agree >= (0.95 if name in ("as_is", "enlarged") else 0.8), (name, agree)


def test_bad_files_are_one_line_each_and_the_others_still_predicted(trained_run, image_dirs, tmp_path, capsys):
    png = (image_dirs["enlarged"] / "000.png").read_bytes()
    jpeg = (image_dirs["inverted_colour_jpeg"] / "000.jpg").read_bytes()
    gif = io.BytesIO()
    Image.new("L", (28, 28)).save(gif, "GIF")
    bad = {"notes.png": b"not a picture", "renamed_gif.png": gif.getvalue(), "cut_header.png": png[:30],
           "cut.png": png[:len(png) // 2], "cut.jpg": jpeg[:len(jpeg) // 2], "empty.png": b""}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    good = image_dirs["as_is"] / "001.png"
    code = predict.main(["--ckpt_path", str(best_checkpoint(trained_run)), *(str(tmp_path / name) for name in bad),
                         str(good), str(tmp_path / "missing.png")])
    captured = capsys.readouterr()
    assert code == 1
    not_png_or_jpeg = ": not a PNG or JPEG image; give PNG or JPEG files (convert others first)"
    resave = "; check that it is a complete, readable PNG or JPEG (re-save or re-download it)"
    expected = [(f"{tmp_path}/notes.png{not_png_or_jpeg}", ""), (f"{tmp_path}/renamed_gif.png{not_png_or_jpeg}", ""),
                (f"{tmp_path}/cut_header.png: cannot read the image (its header is cut short or damaged)", resave),
                (f"{tmp_path}/cut.png: cannot read the image (image file is truncated", resave),
                (f"{tmp_path}/cut.jpg: cannot read the image (image file is truncated", resave),
                (f"{tmp_path}/empty.png: an empty file (0 bytes): copy or save the image again", ""),
                (f"{tmp_path}/missing.png: no such file or directory", "")]
    errors = captured.err.splitlines()
    assert len(errors) == len(expected)
    for line, (start, end) in zip(errors, expected, strict=True):
        assert line.startswith(ERROR + start) and line.endswith(end), line
    assert captured.out.startswith(f"{good}: ") and captured.out.count("%") == 3  # the default top 3
    # Were it on, the cut files would be padded with gray and classified as if whole.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _with_chunk(png: bytes, chunk_type: bytes, payload: bytes) -> bytes:
    """``png`` with the payload of its first ``chunk_type`` chunk replaced, and the chunk's length and CRC to match."""
    start = png.index(chunk_type) - 4
    end = start + 12 + int.from_bytes(png[start : start + 4], "big")
    chunk = chunk_type + payload
    return png[:start] + len(payload).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big") + png[end:]


def test_too_large_images_are_refused_from_the_header_before_decoding(trained_run, image_dirs, tmp_path, capsys,
                                                                      monkeypatch):
    png = (image_dirs["as_is"] / "000.png").read_bytes()  # 28x28, a few hundred bytes
    # Past Pillow's error, past Pillow's warning, past our pixel limit, past our side limit
    claims = {"30000.png": (30000, 30000), "10000.png": (10000, 10000), "8000.png": (8000, 8000),
              "wide.png": (100_000, 10)}
    for name, (width, height) in claims.items():
        ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + png[24:29]  # then depth, colour type, ...
        (tmp_path / name).write_bytes(_with_chunk(png, b"IHDR", ihdr))
        assert (tmp_path / name).stat().st_size < 1000
    decoded = set()
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.add(image.filename) or load(image))
    good = image_dirs["as_is"] / "001.png"
    code = predict.main(["--ckpt_path", str(best_checkpoint(trained_run)), *(str(tmp_path / name) for name in claims),
                         str(good)])
    captured = capsys.readouterr()
    assert code == 1
    shrink = "the limits are 50,000,000 pixels and 65,535 a side); shrink the image and try again"
    assert captured.err.splitlines() == [ERROR + line for line in (
        f"{tmp_path}/30000.png: too large to decode safely (over 89,478,485 pixels; {shrink}",
        f"{tmp_path}/10000.png: too large to decode safely (over 89,478,485 pixels; {shrink}",
        f"{tmp_path}/8000.png: too large to decode safely (8000x8000 pixels; {shrink}",
        f"{tmp_path}/wide.png: too large to decode safely (100000x10 pixels; {shrink}")]
    assert captured.out.startswith(f"{good}: ")
    assert decoded == {str(good)}  # the others were refused before a pixel was decoded


def test_large_images_are_decoded_small_and_shrunk_first(images, tmp_path, monkeypatch):
    array = images[0][0].numpy()
    big_jpeg, big_png = tmp_path / "big.jpg", tmp_path / "big.png"
    Image.fromarray(255 - array).convert("RGB").resize((2400, 1800)).save(big_jpeg)
    Image.fromarray(array).convert("RGBA").resize((1200, 900)).save(big_png)
    small = predict.prepare(Image.fromarray(array).resize((224, 168)))
    handed, worked_on = [], []
    prepare, exif_transpose = predict.prepare, ImageOps.exif_transpose
    monkeypatch.setattr(predict, "prepare", lambda image: handed.append((image.mode, image.size)) or prepare(image))
    monkeypatch.setattr(ImageOps, "exif_transpose", lambda image: worked_on.append(image.size) or exif_transpose(image))
    for path in (big_jpeg, big_png):
        assert (predict.read_image(path).int() - small.int()).abs().float().mean() < 10
    # The JPEG decoded at 1/8 scale, in grayscale; the PNG in full, then shrunk before anything else copied it.
    assert handed == [("L", (300, 225)), ("RGBA", (1200, 900))]
    assert worked_on == [(224, 168), (224, 168)]


def test_animated_images_use_their_first_frame(trained_run, images, tmp_path, capsys, recwarn):
    first, second = (Image.fromarray(a).convert("RGB") for a in images[0][:2].numpy())
    first.save(tmp_path / "first.png")
    first.save(tmp_path / "first.jpg")
    first.save(tmp_path / "animated.png", save_all=True, append_images=[second])  # APNG
    first.save(tmp_path / "mpo.jpg", "MPO", save_all=True, append_images=[second])  # a multi-picture JPEG
    # acTL saying 0 frames: Pillow warns that it falls back to the main image, nothing the user need hear
    (tmp_path / "bad_actl.png").write_bytes(_with_chunk((tmp_path / "animated.png").read_bytes(), b"acTL", bytes(8)))
    with Image.open(tmp_path / "animated.png") as apng, Image.open(tmp_path / "mpo.jpg") as mpo:
        assert apng.n_frames == mpo.n_frames == 2
    names = ("first.png", "animated.png", "bad_actl.png", "first.jpg", "mpo.jpg")
    code = predict.main(["--ckpt_path", str(best_checkpoint(trained_run)), "--json",
                         *(str(tmp_path / name) for name in names)])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == "" and len(json.loads(captured.out)) == len(names)
    assert not [w for w in recwarn if w.category is UserWarning]
    first_png, *animated_png, first_jpeg, mpo = (predict.read_image(tmp_path / name) for name in names)
    assert all(torch.equal(first_png, image) for image in animated_png) and torch.equal(first_jpeg, mpo)


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


def test_a_file_name_that_is_not_utf8_is_printed_escaped(trained_run, images, tmp_path):
    # bytes a Latin-1 system wrote (café.png), under a UTF-8 locale: Python reads the é byte as a lone surrogate
    image = tmp_path / os.fsdecode(b"caf\xe9.png")
    Image.fromarray(images[0][0].numpy()).save(image)
    missing = tmp_path / os.fsdecode(b"no\xefve.png")
    done = subprocess.run([sys.executable, "-m", "fashion_cnn.predict", "--ckpt_path",
                           str(best_checkpoint(trained_run)), str(image), str(missing)],
                          capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"}, timeout=300,
                          cwd=ROOT)
    out, err = done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
    assert done.returncode == 1 and "Traceback" not in err, err  # 1: the missing file; the other was classified
    assert out.startswith(f"{tmp_path}/caf\\xe9.png: ") and out.count("\n") == 1, out
    assert err == f"{ERROR}{tmp_path}/no\\xefve.png: no such file or directory\n"
