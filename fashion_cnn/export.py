"""Export a checkpoint's network for serving: ``python -m fashion_cnn.export --ckpt_path PATH|best|last``.

Writes ``<checkpoint name>.torchscript.pt`` and/or ``<checkpoint name>.onnx`` (input ``images``: normalised float32
[B, 1, 28, 28] with any batch size B; output ``logits`` [B, 10]) and ``<checkpoint name>.json`` with the mean/std to
normalise with and the class names. ONNX needs the ``export`` extra: ``pip install -e '.[export]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from fashion_cnn.checkpoints import Loaded, load
from fashion_cnn.commands import (
    CommandError,
    add_checkpoint_arguments,
    cannot_write,
    missing_dirs,
    parser,
    remove_empty,
    run,
)
from fashion_cnn.data_files import CLASSES
from fashion_cnn.errors import first_line

PROG = "python -m fashion_cnn.export"
FORMATS = ("torchscript", "onnx")
INPUT_SHAPE = (1, 28, 28)
# a bound on the dynamic batch dimension: without one, torch 2.6 and 2.7 cannot export the shifted test-time views
# (torch 2.6: a guard "batch != 2**63 - 1" is violated)
MAX_BATCH = 2**20


def export_torchscript(net: nn.Module, path: Path) -> Path:
    """``torch.jit.script`` of the network (scripting, unlike tracing, keeps every input shape general)."""
    with warnings.catch_warnings():
        # Deprecated in favour of torch.export, but TorchScript is still what C++/LibTorch and many servers load.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
        try:
            scripted = torch.jit.script(net)
        except (RuntimeError, torch.jit.frontend.FrontendError) as err:  # Python that TorchScript cannot compile
            raise CommandError(f"TorchScript cannot compile this network ({first_line(err)}); export it with "
                               f"--formats onnx") from None
    try:
        scripted.save(str(path))
    except RuntimeError as err:  # torch's writer reports a full disk this way, not as an OSError
        raise CommandError(f"cannot write {path.name} ({first_line(err)}); free some space or choose another "
                           f"--out_dir") from None
    return path


def check_onnx_packages() -> None:
    """Refuse an ONNX export, before anything is loaded or written, where its packages are not installed."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs both; fail with a clear message instead)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise CommandError(f"ONNX export needs the {err.name} package: pip install -e '.[export]' "
                           f"(or choose --formats torchscript)") from None


def export_onnx(net: nn.Module, path: Path) -> Path:
    """ONNX via ``torch.export``, with the batch dimension left dynamic."""
    check_onnx_packages()
    example = torch.zeros(2, *INPUT_SHAPE)  # 2, not 1: torch.export would specialise a batch of 1 as a constant
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress chatter and deprecation notes of its internals
        try:
            torch.onnx.export(net, (example,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch", max=MAX_BATCH)},), dynamo=True,
                              verbose=False, external_data=False)  # one self-contained file: a few MB at most
        except RuntimeError as err:  # torch.export or the ONNX translation could not follow the network
            raise CommandError(f"ONNX cannot export this network ({first_line(err)}); export it with "
                               f"--formats torchscript") from None
    return path


def sidecar(loaded: Loaded, files: list[Path]) -> dict:
    """How to feed the exported network: what a server needs besides the weights."""
    return {
        "checkpoint": str(loaded.path),
        "checkpoint_epoch": loaded.epoch,  # which weights: the run may have gone on since
        "checkpoint_step": loaded.global_step,
        "files": [f.name for f in files],
        "input": {"name": "images", "shape": ["batch", *INPUT_SHAPE], "dtype": "float32",
                  "normalise": "x = (uint8_pixels / 255 - mean) / std; light object on black, like FashionMNIST"},
        "output": {"name": "logits", "shape": ["batch", len(CLASSES)], "softmax": "for probabilities",
                   # already averaged over test-time views: mirror images (model.eval_mirror), shifted images
                   # (model.final_shift, pixels)
                   "mirror_average": loaded.mirrored, "shift_average": loaded.shift},
        "mean": loaded.mean,
        "std": loaded.std,
        "classes": list(CLASSES),
    }


def export(loaded: Loaded, out_dir: Path, formats: list[str]) -> list[Path]:
    """Write the chosen formats and the JSON sidecar into ``out_dir``; returns the paths written. All or nothing:
    each file is written aside and moved into place once every one of them is, so a failed export leaves the files
    of an earlier one as they were, and no directory it made."""
    made = missing_dirs(out_dir)
    try:
        return _write_together(loaded, out_dir, formats)
    except BaseException:
        remove_empty(made)
        raise


def _write_together(loaded: Loaded, out_dir: Path, formats: list[str]) -> list[Path]:
    stem = loaded.path.stem
    net = loaded.net.eval()
    writers = {"torchscript": (export_torchscript, f"{stem}.torchscript.pt"), "onnx": (export_onnx, f"{stem}.onnx")}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as aside:
            files = [write(net, Path(aside) / name) for f, (write, name) in writers.items() if f in formats]
            meta = Path(aside) / f"{stem}.json"
            meta.write_text(json.dumps(sidecar(loaded, files), indent=2) + "\n")
            for path in (*files, meta):
                os.replace(path, out_dir / path.name)
    except OSError as err:
        raise cannot_write(out_dir, err, "--out_dir") from None
    return [out_dir / path.name for path in (*files, meta)]


def formats_type(value: str) -> list[str]:
    """The argparse type of ``--formats``: a comma-separated subset of :data:`FORMATS`."""
    formats = [f.strip().lower() for f in value.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {','.join(FORMATS)}")
    return formats


def main(argv: list[str] | None = None) -> int:
    """``python -m fashion_cnn.export``: its exit status (:mod:`fashion_cnn.commands` lists them)."""
    p = parser(PROG, "Export a checkpoint's network as TorchScript and/or ONNX.")
    add_checkpoint_arguments(p)
    p.add_argument("--out_dir", default=None, help="where to write (default: export/ in the checkpoint's run dir)")
    p.add_argument("--formats", type=formats_type, default=",".join(FORMATS),
                   help=f"comma-separated, from {','.join(FORMATS)}")
    args = p.parse_args(argv)

    def body() -> int:
        if "onnx" in args.formats:
            check_onnx_packages()
        loaded = load(args.ckpt_path, args.logs_dir)
        out_dir = Path(args.out_dir) if args.out_dir else loaded.run_dir / "export"
        for path in export(loaded, out_dir, args.formats):
            print(f"wrote {path}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
