"""Shared fixtures: a small real-data copy of FashionMNIST and an environment that finds nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fashion_cnn import data_files
from fashion_cnn.datamodule import FashionMNISTDataModule

FIXTURE = Path(__file__).parent / "data" / "fashion_mnist_small"  # 512 train + 256 test images of the real set


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


def real_data_dir() -> Path | None:
    try:
        return data_files.find(None)
    except data_files.DataError:
        return None


requires_real_data = pytest.mark.skipif(real_data_dir() is None,
                                        reason="the real FashionMNIST is not installed (run `make data`)")
