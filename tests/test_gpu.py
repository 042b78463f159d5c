"""The GPU path (run by benchmarks/gpu_check.sh on a machine with CUDA; skipped elsewhere)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from fashion_cnn.datamodule import FashionMNISTDataModule
from fashion_cnn.module import FashionClassifier
from tests.helpers import FIXTURE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def fit_on_gpu(**model_args) -> tuple[L.Trainer, FashionMNISTDataModule]:
    torch.manual_seed(0)
    dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False, augment=True)
    # log_every_n_steps=1: the fixture is a few steps an epoch, fewer than Lightning's default logging interval
    trainer = L.Trainer(accelerator="gpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, log_every_n_steps=1,
                        precision=model_args.pop("precision", None))
    trainer.fit(FashionClassifier(lr=0.05, **model_args), datamodule=dm)
    return trainer, dm


def test_dataset_lives_on_the_gpu_and_batches_need_no_copy():
    trainer, dm = fit_on_gpu()
    assert dm.train_set.images.is_cuda and dm.test_set.images.is_cuda
    images, labels = next(iter(dm.train_dataloader()))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.uint8
    assert 0.0 <= float(trainer.callback_metrics["test/acc"]) <= 1.0


@pytest.mark.parametrize("options", [{"precision": "bf16-mixed"}, {"channels_last": True},
                                     {"compile": True, "precision": "bf16-mixed"}])
def test_fast_gpu_options_train(options):
    trainer, _ = fit_on_gpu(**options)
    assert torch.isfinite(torch.tensor(float(trainer.callback_metrics["train/loss"])))
    assert float(trainer.callback_metrics["test/acc"]) > 0.25  # it learns: chance is 0.1; 0.42-0.46 on CPU


def test_divergence_between_logging_steps_keeps_the_last_good_checkpoint(tmp_path):
    from fashion_cnn.module import TrainingDiverged

    dm = FashionMNISTDataModule(data_dir=str(FIXTURE), verify=False, download=False)
    # no step is a logging step: only the device flag, read when the epoch's checkpoint is saved, can see the NaN
    trainer = L.Trainer(accelerator="gpu", devices=1, max_epochs=2, logger=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, num_sanity_val_steps=0, log_every_n_steps=1000)
    with pytest.raises(TrainingDiverged, match="between the steps it is logged"):
        trainer.fit(FashionClassifier(lr=1e6), datamodule=dm)
    assert not list(tmp_path.rglob("*.ckpt"))
