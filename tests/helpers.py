"""What several test modules share: the small real-data fixture, the fit arguments that use it, and readers of
what a run leaves behind (its TensorBoard scalars, a digest of a directory tree)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from fashion_cnn import data_files
from fashion_cnn.claim import CLAIM
from fashion_cnn.runs import newest, run_scalars

FIXTURE = Path(__file__).parent / "data" / "fashion_mnist_small"  # 512 train + 256 test images of the real set

# `python -m fashion_cnn.fit` arguments for a quick run on the fixture.
SMALL = ["--data.data_dir", str(FIXTURE), "--data.verify", "false", "--data.download", "false",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.log_every_n_steps", "4"]

TRAINED_EPOCHS = 3  # the length of conftest's shared `trained_run`


def fixture_cut(dest: Path, train_images: int) -> Path:
    """A copy of the fixture in ``dest`` whose training set is its first ``train_images`` images: a copy of the
    dataset of another size."""
    dest.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(FIXTURE / f"{name}.gz", dest / f"{name}.gz")
    for name, header, size in (("train-images-idx3-ubyte", 16, 28 * 28), ("train-labels-idx1-ubyte", 8, 1)):
        raw = gzip.decompress((FIXTURE / f"{name}.gz").read_bytes())  # idx: magic, count, [rows, cols], data
        count = train_images.to_bytes(4, "big")
        (dest / f"{name}.gz").write_bytes(gzip.compress(raw[:4] + count + raw[8:header + train_images * size]))
    return dest


def real_data_dir() -> Path | None:
    """Where the full dataset is installed, or None."""
    try:
        return data_files.find(None)
    except data_files.DataError:
        return None


requires_real_data = pytest.mark.skipif(real_data_dir() is None,
                                        reason="the real FashionMNIST is not installed (run `make data`)")


def scalars(run: Path) -> dict[str, list[float]]:
    """Every scalar a run logged to TensorBoard, by tag, in step order."""
    return {tag: [e.value for e in events] for tag, events in run_scalars(run).items()}


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file below ``root``, and every directory (an empty run directory left behind counts):
    equal before and after means nothing was changed or added. A released run claim (fashion_cnn.claim), which a
    process that tried to train a run leaves, is not part of the run."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*")) if not _released_claim(p)}


def _released_claim(path: Path) -> bool:
    return bool(CLAIM.fullmatch(path.name)) and bool(json.loads(path.read_text()).get("released"))


def best_checkpoint(run: Path) -> Path:
    """The checkpoint a run reported: its best-*.ckpt (picked on a validation split), else its last.ckpt."""
    checkpoints = run / "checkpoints"
    return newest(checkpoints, "best*.ckpt") or checkpoints / "last.ckpt"


def signal_in_epoch_3(proc: subprocess.Popen, sig: int, timeout: float = 240) -> list[str]:
    """Send ``sig`` to a fit or study process as soon as it prints epoch 2's summary line (so it is inside epoch
    3), and return all it printed once it has ended. A process that hangs is killed after ``timeout`` seconds, so
    that the test fails on its exit status instead of waiting forever for a line."""
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        output = []
        for line in proc.stdout:
            output.append(line)
            if line.startswith("[2] "):
                proc.send_signal(sig)
                break
        output += proc.stdout.readlines()
        proc.wait()
        return output
    finally:
        watchdog.cancel()
