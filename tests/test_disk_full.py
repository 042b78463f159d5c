"""A disk that fills up mid-run, on a really full filesystem (a small tmpfs, which needs root on Linux)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from fashion_cnn import fit
from tests.helpers import SMALL

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                                reason="mounting a small tmpfs needs root on Linux")
EPOCHS = 3


class FillTheDisk(L.Callback):
    """At the start of the second epoch, fills the filesystem ``path`` is on, as another program might."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            with open(self.path, "wb", buffering=0) as f:
                try:
                    while f.write(b"\0" * 4096):
                        pass
                except OSError:  # ENOSPC: full
                    pass


@pytest.fixture
def small_disk(tmp_path) -> Path:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=False)


def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes(small_disk, tmp_path, monkeypatch, capsys):
    filler = small_disk / "filler"
    config = tmp_path / "fill.yaml"
    config.write_text(f"trainer:\n  callbacks:\n    - class_path: {__name__}.FillTheDisk\n"
                      f"      init_args: {{path: {filler}}}\n")
    monkeypatch.chdir(tmp_path)
    args = [*SMALL, "--trainer.max_epochs", str(EPOCHS), "--trainer.logger.init_args.save_dir", str(small_disk)]
    assert fit.main([*args, "--config", str(config)]) == 1
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("python -m fashion_cnn.fit: error:")]
    assert len(said) == 1 and "Traceback" not in err, err
    assert "no space left on the device while writing" in said[0] and "(end of epoch 1) is intact" in said[0]
    assert "--ckpt_path last" in said[0]

    checkpoints = small_disk / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith(".")) == []  # no partial file
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 0  # whole, and the last good one

    filler.unlink()  # space freed: the same command continues the run
    assert fit.main([*args, "--ckpt_path", "last"]) == 0
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == EPOCHS - 1
    assert sorted(p.name for p in (small_disk / "lightning_logs").iterdir()) == ["version_0"]
