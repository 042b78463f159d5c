"""Classify your own images: ``python -m fashion_cnn.predict --ckpt_path PATH|best|last IMAGE_OR_DIR [...]``.

Any PNG/JPEG (any size up to :data:`MAX_PIXELS`, colour or grayscale) is turned into what the network was trained
on: a 28x28 grayscale image of a light object on a black background. A file that cannot be read safely (not a
PNG/JPEG, truncated or corrupt data, too many pixels) is reported on one line and skipped; the exit status is then 1.

Memory: a file's size is checked from its header, before any pixel is decoded: at most :data:`MAX_PIXELS` (50
million) pixels and :data:`MAX_SIDE` (65,535) a side. A JPEG is decoded at 1/2, 1/4 or 1/8 scale when that still
leaves :data:`WORK_SIZE` pixels on the longer side; a PNG is decoded in full. Whatever was decoded is shrunk to
:data:`WORK_SIZE` on the longer side first, so the steps after it work on a small image. Until then at most ~9
bytes per pixel of the file are held (the worst cases: a transparent palette or RGBA PNG, decoded at 4 bytes a
pixel plus the premultiplied copy the shrinking makes; a progressive CMYK JPEG, whose decoder keeps 8 bytes of
coefficients a pixel), plus at most 1 MB of decoder rows: so at most ~450 MB per image, and a few MB for a typical
phone photo (a baseline JPEG). Files are read one at a time and only their 28x28 results (784 bytes each) are
kept, then classified in chunks of 1000, so the bound holds for a whole directory too.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fashion_cnn.analysis import logits
from fashion_cnn.checkpoints import Loaded, load
from fashion_cnn.commands import add_checkpoint_arguments, parser, run
from fashion_cnn.data_files import CLASSES
from fashion_cnn.errors import FashionCNNError, one_line

PROG = "python -m fashion_cnn.predict"
SIZE = 28
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# Only these decoders run, whatever a file is called: fewer decoders to trust with untrusted files, and Pillow's EPS
# one would start Ghostscript on a renamed file.
FORMATS = ("PNG", "JPEG")
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # how PNG and JPEG files begin
# The most pixels (width x height) a file may have. Our own limit, so Pillow's global MAX_IMAGE_PIXELS (89.5 million,
# a warning; an error above twice that) stays as other code set it: 50 million lets a 50-megapixel phone photo
# (8160x6120) through and bounds one image's memory to ~450 MB (see the module docstring).
MAX_PIXELS = 50_000_000
# The longest side a file may have: JPEG's own maximum. The PNG decoder keeps two rows of up to 8 bytes a pixel, so
# this keeps them under 1 MB; a 50-million-pixel single row would need 800 MB more (or fail inside Pillow).
MAX_SIDE = 65_535
# Larger images are shrunk to this on the longer side before anything else: the result is only 28x28, and the copies
# that the later steps make are then small. 8x the result's size, so the final shrinking still averages 8x8 pixels.
WORK_SIZE = 8 * SIZE
# What to do when a PNG/JPEG cannot be read.
RESAVE = "check that it is a complete, readable PNG or JPEG (re-save or re-download it)"


class ImageReadError(FashionCNNError):
    """A file that is not an image this command can read."""


def prepare(image: Image.Image) -> torch.Tensor:
    """A PIL image as a uint8 [28, 28] tensor prepared the way FashionMNIST's images were made.

    Grayscale; inverted when the border is lighter than the centre (the usual dark-on-light photo), since the
    training images are light objects on black; contrast stretched to 0..255 (the training images span it);
    shrunk so the longer side is 28 and centred on black, keeping the aspect ratio.

    Takes the modes Pillow reads PNG and JPEG files in; a :class:`ValueError` for others (32-bit integer or float
    pixels have no known range to make 8-bit).
    """
    image = _eight_bit(image)
    if max(image.size) > WORK_SIZE:  # see WORK_SIZE; RGBA and LA are premultiplied by Pillow, so edges stay right
        image = image.resize(_fitted(image.size, WORK_SIZE), Image.Resampling.BOX)
    image = ImageOps.exif_transpose(image)  # phone photos are often stored sideways with an EXIF rotation
    if image.mode in ("RGBA", "LA"):
        # A transparent background is the backdrop of a cut-out product photo: make it white like a photo's.
        backdrop = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(backdrop, image.convert("RGBA"))
    gray = image.convert("L")
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(gray.height, gray.width).float()
    if _border_mean(pixels) > _centre_mean(pixels):
        gray = ImageOps.invert(gray)
    gray = ImageOps.autocontrast(gray)
    size = _fitted(gray.size, SIZE)
    # Area averaging when shrinking, like a camera sensor; smooth interpolation when enlarging small images.
    gray = gray.resize(size, Image.Resampling.BOX if max(gray.size) > SIZE else Image.Resampling.BICUBIC)
    canvas = Image.new("L", (SIZE, SIZE), 0)
    canvas.paste(gray, ((SIZE - size[0]) // 2, (SIZE - size[1]) // 2))
    return torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(SIZE, SIZE).clone()


def _eight_bit(image: Image.Image) -> Image.Image:
    """``image`` in a mode that Pillow can shrink with area averaging and make grayscale: L, LA, RGB, RGBA or CMYK."""
    if image.mode == "I;16":  # 16-bit grayscale PNG: Image.convert would clip everything above 255 to white
        return image.point(lambda v: v / 256, "L")
    if image.mode in ("P", "PA"):  # palette indices cannot be averaged
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "L")
    if image.mode == "1":  # Pillow resizes 1-bit images without averaging
        return image.convert("L")
    if image.mode not in ("L", "LA", "RGB", "RGBA", "CMYK"):
        raise ValueError(f"pixel mode {image.mode} cannot be made 8-bit grayscale")
    return image


def _fitted(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """``size`` scaled so its longer side is ``longest``, keeping the aspect ratio (at least 1 pixel each way)."""
    scale = longest / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _border_mean(pixels: torch.Tensor) -> float:
    """Mean of a frame about 1/14 of the shorter side wide (2 px on a 28x28 image): mostly background."""
    w = max(1, min(pixels.shape) // 14)
    frame = torch.ones_like(pixels, dtype=torch.bool)
    frame[w:-w, w:-w] = False
    return pixels[frame].mean().item()


def _centre_mean(pixels: torch.Tensor) -> float:
    """Mean of the central half (each way): mostly object."""
    h, w = pixels.shape
    return pixels[h // 4 : h - h // 4, w // 4 : w - w // 4].mean().item()


def read_image(path: Path) -> torch.Tensor:
    """:func:`prepare` of the PNG/JPEG file at ``path``; :class:`ImageReadError` if it cannot be read safely.

    Pillow's decompression-bomb warning counts as an error too, so a file never prints more than its one line.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Pillow's other warnings (e.g. "malformed MPO file, it will be interpreted as a base JPEG file") say
            # that it fell back to reading the main image, which is what is classified: nothing to act on.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            with Image.open(path, formats=FORMATS) as image:
                width, height = image.size
                if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:  # from the header: nothing decoded
                    raise _too_large(path, f"{width}x{height} pixels")
                # JPEG only: decode at a smaller scale, and colour as grayscale (the luma that convert("L") computes)
                image.draft("L", _fitted(image.size, WORK_SIZE))
                image.load()
                return prepare(image)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # Pillow's own check, at a higher count
        raise _too_large(path, f"over {Image.MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        with path.open("rb") as file:
            start = file.read(8)
        problem = ("an empty file (0 bytes): copy or save the image again" if not start
                   else f"cannot read the image (its header is cut short or damaged); {RESAVE}"
                   if start.startswith(SIGNATURES)
                   else "not a PNG or JPEG image; give PNG or JPEG files (convert others first)")
        raise ImageReadError(f"{path}: {problem}") from None
    except (OSError, ValueError, SyntaxError) as err:  # truncated/corrupt data, an unreadable file, ...
        raise ImageReadError(f"{path}: cannot read the image ({one_line(err)}); {RESAVE}") from None


def _too_large(path: Path, size: str) -> ImageReadError:
    return ImageReadError(f"{path}: too large to decode safely ({size}; the limits are {MAX_PIXELS:,} pixels and "
                          f"{MAX_SIDE:,} a side); shrink the image and try again")


def expand(inputs: list[str]) -> list[tuple[Path, str | None]]:
    """Files to classify, in order: the files given and the PNG/JPEG files directly inside given directories
    (sorted); each with an error message instead when there is nothing to read."""
    files: list[tuple[Path, str | None]] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            files += [(p, None) for p in found] or [(path, f"{path}: no .png/.jpg/.jpeg files in this directory")]
        else:
            files.append((path, None if path.exists() else f"{path}: no such file or directory"))
    return files


def classify(loaded: Loaded, images: torch.Tensor, top_k: int) -> list[list[tuple[str, float]]]:
    """Top-``top_k`` (class name, probability) of each uint8 image [N, 28, 28], most probable first."""
    # in chunks, so that a large directory does not need one huge batch
    probs = logits(loaded.net, images, loaded.datamodule.normalize, batch_size=1000).softmax(1)
    values, indices = probs.topk(min(top_k, len(CLASSES)), dim=1)
    return [[(CLASSES[i], v) for i, v in zip(row_indices, row_values, strict=True)]
            for row_indices, row_values in zip(indices.tolist(), values.tolist(), strict=True)]


def main(argv: list[str] | None = None) -> int:
    """``python -m fashion_cnn.predict``: its exit status (:mod:`fashion_cnn.commands` lists them)."""
    p = parser(PROG, "Classify PNG/JPEG images of clothing with a trained checkpoint.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or directories of them")
    add_checkpoint_arguments(p)
    p.add_argument("--top_k", type=int, default=3, choices=range(1, len(CLASSES) + 1), metavar="{1..10}",
                   help="how many classes to show per image")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    args = p.parse_args(argv)

    def body() -> int:
        loaded = load(args.ckpt_path, args.logs_dir)
        paths, images, failed = [], [], 0
        for path, problem in expand(args.inputs):
            try:
                if problem:
                    raise ImageReadError(problem)
                images.append(read_image(path))
                paths.append(path)
            except ImageReadError as err:  # report it and go on with the other files
                print(f"{PROG}: error: {err}", file=sys.stderr)
                failed += 1
        results = classify(loaded, torch.stack(images), args.top_k) if images else []
        if args.json:
            print(json.dumps([{"path": str(path), "top_k": [{"class": c, "probability": prob} for c, prob in top]}
                              for path, top in zip(paths, results, strict=True)], indent=2))
        else:
            for path, top in zip(paths, results, strict=True):
                print(f"{path}: " + ", ".join(f"{c} {100 * prob:.1f}%" for c, prob in top))
        return 1 if failed else 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
