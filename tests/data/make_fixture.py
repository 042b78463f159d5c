"""Regenerate tests/data/fashion_mnist_small/: the first 512 training and 256 test images of the real FashionMNIST.

Run from the repository root with the real dataset available: ``python tests/data/make_fixture.py``.
The files keep the idx format (gzipped, fixed mtime so the bytes are reproducible).
"""

import gzip
from pathlib import Path

from fashion_cnn.data_files import file_name, find, load_split

SIZES = {"train": 512, "test": 256}
OUT = Path(__file__).parent / "fashion_mnist_small"


def write_idx(path: Path, magic: int, tensor) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + tensor.contiguous().numpy().tobytes())


def main() -> None:
    source = find(None)
    if source is None:
        raise SystemExit("the real FashionMNIST is needed: run `make data` first")
    OUT.mkdir(exist_ok=True)
    for split, n in SIZES.items():
        images, labels = load_split(source, split)
        write_idx(OUT / f"{file_name(split, 'images')}.gz", 2051, images[:n])
        write_idx(OUT / f"{file_name(split, 'labels')}.gz", 2049, labels[:n].to(dtype=images.dtype))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
