"""Shared fixtures: a small real-data copy of FashionMNIST and an environment that finds nothing else."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fashion_cnn import data_files
from fashion_cnn.datamodule import FashionMNISTDataModule
from tests.helpers import FIXTURE, SMALL, TRAINED_EPOCHS


@pytest.fixture
def no_other_copies(monkeypatch, tmp_path):
    """Neither $FASHION_MNIST_DIR nor the Debian package location holds a copy."""
    monkeypatch.delenv(data_files.ENV_VAR, raising=False)
    monkeypatch.setattr(data_files, "SYSTEM_DIR", tmp_path / "no-system-copy")


@pytest.fixture
def fixture_copy(tmp_path) -> Path:
    """A writable copy of the fixture in torchvision's layout: returns its data_dir."""
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    shutil.copytree(FIXTURE, raw)
    return tmp_path / "data"


@pytest.fixture
def small_dm() -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, batch_size=64,
                                eval_batch_size=100)
    dm.setup()
    return dm


# The picture callback every 2 epochs, so the 3-epoch run shows both the periodic and the last-epoch pictures.
_TRAINED_CALLBACKS = """\
trainer:
  callbacks:
    - class_path: fashion_cnn.callbacks.PredictionPictures
      init_args: {every_n_epochs: 2}
    - class_path: fashion_cnn.callbacks.HParamsSummary
    - class_path: lightning.pytorch.callbacks.LearningRateMonitor
      init_args: {logging_interval: epoch}
"""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One short training run on the fixture (fit, then the final test of the best checkpoint), shared by the
    tests of the commands that read runs and checkpoints; returns its lightning_logs/version_0 directory."""
    from fashion_cnn import fit

    root = tmp_path_factory.mktemp("trained")
    (root / "callbacks.yaml").write_text(_TRAINED_CALLBACKS)
    previous = os.getcwd()
    os.chdir(root)  # the run goes to ./lightning_logs
    try:
        code = fit.main(["--config", str(root / "callbacks.yaml"), *SMALL, "--trainer.max_epochs", str(TRAINED_EPOCHS),
                         "--model.lr", "0.05", "--model.momentum", "0.9"])  # learns something in 3 short epochs
    finally:
        os.chdir(previous)
    assert code == 0
    return root / "lightning_logs" / "version_0"


@pytest.fixture(scope="session")
def mirror_run(tmp_path_factory) -> Path:
    """One short run of a narrow StrongCNN with every augmentation, a validation split, and every test-time
    augmentation (mirror images in each evaluation, ``model.eval_mirror``; 1-pixel shifts in the final test,
    ``model.final_shift``); returns its run directory."""
    from fashion_cnn import fit

    root = tmp_path_factory.mktemp("mirror")
    previous = os.getcwd()
    os.chdir(root)
    try:
        code = fit.main(["--config", "tiny", *SMALL, "--trainer.max_epochs", "1", "--trainer.callbacks", "[]",
                         "--data.erase", "0.5", "--data.val_size", "128",
                         "--model.eval_mirror", "true", "--model.final_shift", "1"])
    finally:
        os.chdir(previous)
    assert code == 0
    return root / "lightning_logs" / "version_0"
