"""Finding and checking the idx files: every damaged input gives a one-line error and nothing is changed."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from fashion_cnn import data_files
from fashion_cnn.data_files import MEAN, STD, DataError, file_name, find, load_split, locate, read_idx
from tests.helpers import FIXTURE, real_data_dir, requires_real_data, tree_digest

IMAGES = file_name("train", "images")
LABELS = file_name("train", "labels")


def write_gz(path: Path, payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(payload)


def raw_bytes(name: str) -> bytes:
    return gzip.decompress((FIXTURE / f"{name}.gz").read_bytes())


def assert_one_line_naming(err: DataError, path: Path, words: str) -> None:
    message = str(err)
    assert "\n" not in message
    assert str(path) in message and words in message
    assert "make data" in message and data_files.ENV_VAR in message and "download" in message


def test_fixture_is_real_idx_data():
    for split, n in (("train", 512), ("test", 256)):
        images, labels = load_split(FIXTURE, split, verify=False)
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))


def test_verify_rejects_a_cut_down_copy_by_count():
    with pytest.raises(DataError, match=r"512 images, expected 60,000"):
        load_split(FIXTURE, "train", verify=True)


@requires_real_data
def test_real_dataset_passes_every_check_and_default_stats_match_it():
    from fashion_cnn.datamodule import FashionMNISTDataModule

    train, labels = load_split(real_data_dir(), "train", verify=True)
    test, _ = load_split(real_data_dir(), "test", verify=True)
    assert len(train) == 60_000 and len(test) == 10_000
    assert torch.bincount(labels).tolist() == [6000] * 10
    pixels = train.float() / 255
    defaults = FashionMNISTDataModule().hparams
    assert (defaults.mean, defaults.std) == (MEAN, STD)
    assert pixels.mean().item() == pytest.approx(MEAN, abs=1e-4)
    assert pixels.std().item() == pytest.approx(STD, abs=1e-4)


def test_search_order_data_dir_then_env_then_system(monkeypatch, tmp_path, fixture_copy):
    env_copy = tmp_path / "env"
    env_copy.mkdir()
    for f in FIXTURE.iterdir():
        (env_copy / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv(data_files.ENV_VAR, str(env_copy))
    monkeypatch.setattr(data_files, "SYSTEM_DIR", FIXTURE)
    assert find(fixture_copy) == fixture_copy / "FashionMNIST" / "raw"
    assert find(tmp_path / "empty") == env_copy
    # torchvision's layout under it too: where `make data DATA_DIR=...` downloads, and make study passes it this way
    monkeypatch.setenv(data_files.ENV_VAR, str(fixture_copy))
    assert find(tmp_path / "empty") == fixture_copy / "FashionMNIST" / "raw"
    monkeypatch.delenv(data_files.ENV_VAR)
    assert find(tmp_path / "empty") == FIXTURE


def test_a_fashion_mnist_dir_without_a_copy_is_an_error_not_a_download_elsewhere(monkeypatch, tmp_path,
                                                                                   no_other_copies):
    # e.g. torchvision's FashionMNIST/ folder instead of its raw/ or its parent: before, found nothing and downloaded
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", lambda *a, **k: pytest.fail("downloaded"))
    wrong = tmp_path / "data" / "FashionMNIST"
    shutil.copytree(FIXTURE, wrong / "raw")
    monkeypatch.setenv(data_files.ENV_VAR, str(wrong))
    with pytest.raises(DataError, match=r"FASHION_MNIST_DIR=.*/data/FashionMNIST holds no FashionMNIST copy"):
        locate(tmp_path / "empty", allow_download=True)
    assert data_files.main(["--data_dir", str(tmp_path / "empty"), "--download"]) == 1
    assert locate(tmp_path / "data") == wrong / "raw"  # a data_dir that holds one is used first, as before
    monkeypatch.setattr(data_files, "SYSTEM_DIR", FIXTURE)  # another copy on the machine: used (make study does so)
    assert locate(tmp_path / "empty") == FIXTURE
    monkeypatch.setattr(data_files, "SYSTEM_DIR", tmp_path / "no-system-copy")
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(data_files.ENV_VAR, str(tmp_path / "a_file"))
    assert locate(tmp_path / "data") == wrong / "raw"  # ... whatever the variable says
    with pytest.raises(DataError, match=r"FASHION_MNIST_DIR=.*a_file is not a directory; unset it"):
        locate(tmp_path / "empty", allow_download=True)


def test_uncompressed_files_are_accepted(tmp_path):
    for f in FIXTURE.iterdir():
        (tmp_path / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    images, _ = load_split(find(tmp_path), "test", verify=False)
    assert torch.equal(images, load_split(FIXTURE, "test", verify=False)[0])


def test_missing_data_without_download_says_how_to_get_it(no_other_copies, tmp_path):
    with pytest.raises(DataError, match="FashionMNIST not found") as info:
        locate(tmp_path / "nothing", allow_download=False)
    assert "make data" in str(info.value) and "\n" not in str(info.value)


def test_failed_download_is_one_line_and_leaves_nothing_behind(no_other_copies, tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, *args, **kwargs):  # torchvision's way: the folders made, a file begun, then the error
        raw = Path(root) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b half a file")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match=r"downloading it into .* failed \(Error downloading") as info:
        locate(tmp_path / "data", allow_download=True)
    assert "\n" not in str(info.value) and not (tmp_path / "data").exists()  # not an "incomplete copy" next time


def test_incomplete_copy_is_an_error_not_skipped(no_other_copies, fixture_copy):
    raw = fixture_copy / "FashionMNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"incomplete FashionMNIST copy .* missing t10k-labels-idx1-ubyte"):
        find(fixture_copy)


def test_data_dir_that_is_a_file(tmp_path):
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("oops")
    with pytest.raises(DataError, match="is a file, not a directory"):
        find(not_a_dir)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("truncated_gzip", "cannot be read"),
        ("wrong_magic", "wrong magic number 2049"),
        ("short_payload", "truncated or padded"),
        ("wrong_size", "images are 28x32"),
    ],
)
def test_damaged_images_file_is_reported_and_left_alone(no_other_copies, fixture_copy, monkeypatch, damage, words):
    path = fixture_copy / "FashionMNIST" / "raw" / f"{IMAGES}.gz"
    raw = raw_bytes(IMAGES)
    if damage == "truncated_gzip":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "wrong_magic":
        write_gz(path, (2049).to_bytes(4, "big") + raw[4:])
    elif damage == "short_payload":
        write_gz(path, raw[:-784])
    else:
        write_gz(path, raw[:12] + (32).to_bytes(4, "big") + raw[16:])
    before = tree_digest(fixture_copy)
    monkeypatch.setattr(data_files, "download", lambda *a: pytest.fail("a damaged copy must not be re-downloaded"))
    with pytest.raises(DataError) as info:
        load_split(locate(fixture_copy, allow_download=True), "train", verify=False)
    assert_one_line_naming(info.value, path, words)
    assert tree_digest(fixture_copy) == before


def test_label_out_of_range(fixture_copy):
    path = fixture_copy / "FashionMNIST" / "raw" / f"{LABELS}.gz"
    raw = bytearray(raw_bytes(LABELS))
    raw[-1] = 10
    write_gz(path, bytes(raw))
    with pytest.raises(DataError) as info:
        read_idx(path, "labels", verify=False)
    assert_one_line_naming(info.value, path, "label 10 is out of range 0..9")


def test_images_and_labels_that_do_not_belong_together(fixture_copy):
    raw_dir = fixture_copy / "FashionMNIST" / "raw"
    labels = raw_bytes(LABELS)
    write_gz(raw_dir / f"{LABELS}.gz", (2049).to_bytes(4, "big") + (511).to_bytes(4, "big") + labels[8:-1])
    with pytest.raises(DataError, match="512 train images but 511 labels"):
        load_split(raw_dir, "train", verify=False)


def test_official_count_with_wrong_checksum(tmp_path):
    path = tmp_path / f"{LABELS}.gz"
    write_gz(path, (2049).to_bytes(4, "big") + (60_000).to_bytes(4, "big") + bytes(60_000))
    assert read_idx(path, "labels", verify=False).shape == (60_000,)
    with pytest.raises(DataError) as info:
        read_idx(path, "labels", verify=True)
    assert_one_line_naming(info.value, path, "SHA-256 does not match")


def test_data_files_command_exit_status(no_other_copies, tmp_path, capsys):
    assert data_files.main(["--data_dir", str(tmp_path)]) == data_files.NOT_FOUND
    assert data_files.main(["--data_dir", str(FIXTURE)]) == 1  # found, but not the full official set
    err = capsys.readouterr().err
    assert "expected 60,000" in err and "Traceback" not in err
