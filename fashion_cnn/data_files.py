"""Find, check and read the FashionMNIST idx files.

The dataset is looked for, in order, in: the configured ``data_dir`` (torchvision's ``FashionMNIST/raw/`` layout,
or the files directly in it), the directory named by ``$FASHION_MNIST_DIR``, and the Debian/Ubuntu package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``). Only when no copy exists anywhere is it
downloaded with torchvision into ``data_dir``; a copy that exists but is damaged is reported, never replaced.

Run ``python -m fashion_cnn.data_files`` to see which copy would be used.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from fashion_cnn.commands import missing_dirs, parser, remove_empty, run
from fashion_cnn.errors import FashionCNNError, first_line

PROG = "python -m fashion_cnn.data_files"
ENV_VAR = "FASHION_MNIST_DIR"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILE_SPLITS = ("train", "test")  # the release's two sets of files
_STEMS = {"train": "train", "test": "t10k"}

HOW_TO_GET = (
    "get it with `make data` (installs the Debian package dataset-fashion-mnist), "
    f"or set {ENV_VAR}=/path/to/a/dir holding the four idx files, "
    "or run online so torchvision can download it into data_dir"
)


class DataError(FashionCNNError):
    """A missing or damaged dataset; the message is one line that says what is wrong and how to fix it."""


@dataclass(frozen=True)
class _Official:
    count: int
    sha256: str  # of the decompressed file


# The official release (github.com/zalandoresearch/fashion-mnist), as shipped by Debian and by torchvision.
OFFICIAL = {
    "train-images-idx3-ubyte": _Official(60_000, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": _Official(60_000, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": _Official(10_000, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": _Official(10_000, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
_MAGIC = {"images": 2051, "labels": 2049}  # idx: 0x0000 08 (uint8) 03/01 (dims)

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
NUM_CLASSES = len(CLASSES)
# The training set's pixel mean and std on the 0..1 scale (tests/test_data_files.py recomputes them from the data).
MEAN, STD = 0.2860, 0.3530


def file_name(split: str, kind: str) -> str:
    """The idx file name of ``split`` ('train'/'test') and ``kind`` ('images'/'labels'), without ``.gz``."""
    return f"{_STEMS[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"


def _file_in(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def candidate_dirs(data_dir: str | Path | None) -> list[tuple[str, Path]]:
    """Where a copy is looked for, in order, each with a short label for messages."""
    dirs: list[tuple[str, Path]] = []
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        dirs += [("data_dir", data_dir / "FashionMNIST" / "raw"), ("data_dir", data_dir)]
    if os.environ.get(ENV_VAR):  # the same two layouts as data_dir (make study passes its DATA_DIR this way)
        env_dir = Path(os.environ[ENV_VAR]).expanduser()
        dirs += [(f"${ENV_VAR}", env_dir / "FashionMNIST" / "raw"), (f"${ENV_VAR}", env_dir)]
    dirs.append(("Debian package", SYSTEM_DIR))
    return dirs


def find(data_dir: str | Path | None) -> Path | None:
    """The first directory holding all four idx files, or None if there is none.

    A directory holding only some of them is an error: it is somebody's incomplete copy, not a place to skip.
    """
    if data_dir is not None and Path(data_dir).expanduser().is_file():
        raise DataError(f"data_dir {data_dir} is a file, not a directory; point data_dir at a directory")
    names = [file_name(s, k) for s in FILE_SPLITS for k in ("images", "labels")]
    for label, directory in candidate_dirs(data_dir):
        present = [n for n in names if _file_in(directory, n)]
        if len(present) == len(names):
            return directory
        if present:
            missing = ", ".join(n for n in names if n not in present)
            raise DataError(f"incomplete FashionMNIST copy in {directory} ({label}): missing {missing}; "
                            f"add the missing files, or {HOW_TO_GET}")
    return None


def _read_bytes(path: Path) -> bytearray:
    """The decompressed file, read into one buffer (no transient copies: the training images are 47 MB)."""
    try:
        if path.suffix != ".gz":
            return bytearray(path.read_bytes())
        with open(path, "rb") as raw:
            raw.seek(-4, os.SEEK_END)
            size = int.from_bytes(raw.read(4), "little")  # gzip's trailer: the decompressed size (mod 2**32)
        buffer = bytearray(size)
        view, filled = memoryview(buffer), 0
        with gzip.open(path, "rb") as f:
            while filled < size and (n := f.readinto(view[filled : filled + (1 << 20)])):  # 1 MB at a time
                filled += n
            if filled != size or f.read(1):
                raise OSError("its size does not match the gzip trailer")
        return buffer
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot be read ({err}); the file is damaged: replace it, or {HOW_TO_GET}") from err


def read_idx(path: Path, kind: str, verify: bool = True) -> torch.Tensor:
    """Read one idx file into a uint8 tensor ([N, 28, 28] images or [N] labels), checking it first.

    Checks the magic number, the dimensions, that the payload matches the header and, for labels, the range.
    With ``verify`` it also checks the count and SHA-256 of the official release.
    """
    raw = _read_bytes(path)
    name = path.name.removesuffix(".gz")
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim

    def fail(what: str) -> DataError:
        return DataError(f"{path}: {what}; replace the file, or {HOW_TO_GET}")

    if len(raw) < header:
        raise fail(f"only {len(raw)} bytes, too short for an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[kind]:
        raise fail(f"wrong magic number {magic} (expected {_MAGIC[kind]} for idx {kind})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if kind == "images" and dims[1:] != [28, 28]:
        raise fail(f"images are {dims[1]}x{dims[2]}, expected 28x28")
    expected_len = header + dims[0] * (784 if kind == "images" else 1)
    if len(raw) != expected_len:
        raise fail(f"{len(raw)} bytes but its header promises {expected_len} ({dims[0]} {kind}): truncated or padded")
    if verify and name in OFFICIAL:
        official = OFFICIAL[name]
        if dims[0] != official.count:
            raise fail(f"{dims[0]} {kind}, expected {official.count:,} in the official release")
        if hashlib.sha256(raw).hexdigest() != official.sha256:
            raise fail("SHA-256 does not match the official release (corrupted or modified)")
    data = torch.frombuffer(raw, dtype=torch.uint8, offset=header)
    if kind == "labels":
        if data.numel() and int(data.max()) >= NUM_CLASSES:
            raise fail(f"label {int(data.max())} is out of range 0..{NUM_CLASSES - 1}")
        return data
    return data.view(dims[0], 28, 28)


def load_split(directory: Path, split: str, verify: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 [N, 28, 28]) and labels (int64 [N]) of one split from a directory found by :func:`find`."""
    paths = {kind: _file_in(directory, file_name(split, kind)) for kind in ("images", "labels")}
    for kind, path in paths.items():
        if path is None:
            raise DataError(f"{directory}: no {file_name(split, kind)}[.gz]; {HOW_TO_GET}")
    images = read_idx(paths["images"], "images", verify)
    labels = read_idx(paths["labels"], "labels", verify)
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} {split} images but {len(labels)} labels; "
                        f"the files do not belong together: replace them, or {HOW_TO_GET}")
    return images, labels.long()


def download(data_dir: str | Path) -> Path:
    """Download the official files with torchvision into ``data_dir/FashionMNIST/raw`` (no copy was found)."""
    from torchvision.datasets import FashionMNIST  # only needed on this path

    data_dir = Path(data_dir).expanduser()
    root = data_dir / "FashionMNIST"
    before = set(root.rglob("*"))
    made = missing_dirs(root)
    try:
        for train in (True, False):
            FashionMNIST(str(data_dir), train=train, download=True)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError... all mean "no download"
        # what it wrote before failing would read as an incomplete copy next time: take it away, deepest first
        with contextlib.suppress(OSError):
            written = sorted(set(root.rglob("*")) - before, reverse=True)
            for path in written:
                if not path.is_dir():
                    path.unlink()
            remove_empty([*written, *made])
        raise DataError(f"FashionMNIST was not found and downloading it into {data_dir} failed ({first_line(err)}); "
                        f"{HOW_TO_GET}") from err
    return data_dir / "FashionMNIST" / "raw"


def locate(data_dir: str | Path, allow_download: bool = True) -> Path:
    """The directory to read the dataset from: an existing copy, else a fresh download; else :class:`DataError`."""
    found = find(data_dir)
    if found is not None:
        return found
    if named := os.environ.get(ENV_VAR):  # the copy a user named is not there: no download of another one
        if not Path(named).expanduser().is_dir():
            raise DataError(f"${ENV_VAR}={named} is not a directory; unset it or {HOW_TO_GET}")
        raise DataError(f"${ENV_VAR}={named} holds no FashionMNIST copy (the four idx files, in it or in its "
                        f"FashionMNIST/raw/), and there is no other; point it at the directory that holds them")
    if not allow_download:
        places = ", ".join(str(d) for _, d in candidate_dirs(data_dir))
        raise DataError(f"FashionMNIST not found (looked in {places}); {HOW_TO_GET}")
    return download(data_dir)


NOT_FOUND = 3  # exit status of main() when there is no copy, so `make data` knows to fetch one


def main(argv: list[str] | None = None) -> int:
    """``python -m fashion_cnn.data_files``: say which copy would be used and check it fully."""
    p = parser(PROG, __doc__.split("\n")[0])
    p.add_argument("--data_dir", default="data", help="the DataModule's data_dir")
    p.add_argument("--download", action="store_true", help="download with torchvision if no copy is found")
    args = p.parse_args(argv)

    def body() -> int:
        directory = locate(args.data_dir) if args.download else find(args.data_dir)
        if directory is None:
            places = ", ".join(str(d) for _, d in candidate_dirs(args.data_dir))
            print(f"FashionMNIST not found (looked in {places})", file=sys.stderr)
            return NOT_FOUND
        for split in FILE_SPLITS:
            images, _ = load_split(directory, split)
            print(f"{split:>5}: {len(images):,} images OK")
        print(f"FashionMNIST found and verified in {directory}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
