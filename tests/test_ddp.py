"""Lightning's own DDP on the CPU: two gloo processes, disjoint shards, metrics reduced over the whole test set."""

from __future__ import annotations

import subprocess
import sys

import torch
import torch.nn.functional as F

from fashion_cnn import checkpoints
from tests.helpers import FIXTURE, scalars


def test_training_shards_are_disjoint_and_cover_the_set(small_dm):
    class FakeTrainer:
        world_size, global_rank = 2, 0

    shards = []
    for rank in (0, 1):
        FakeTrainer.global_rank = rank
        small_dm.trainer = FakeTrainer()
        sampler = small_dm.train_dataloader().sampler
        sampler.set_epoch(1)
        shards.append(list(sampler))
    small_dm.trainer = None
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(512))


def test_two_process_ddp_logs_the_full_test_set_metrics(tmp_path):
    cmd = [sys.executable, "-m", "fashion_cnn.fit", "--data.data_dir", str(FIXTURE), "--data.verify", "false",
           "--data.download", "false", "--data.eval_batch_size", "50", "--trainer.max_epochs", "2",
           "--model.lr", "0.05", "--trainer.enable_progress_bar", "false", "--trainer.strategy", "ddp",
           "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "lightning_logs").iterdir())
    assert [r.name for r in runs] == ["version_0"]  # one TensorBoard run, written by rank 0
    run = runs[0]
    assert len(list((run / "checkpoints").glob("last*.ckpt"))) == 1
    logged = scalars(run)
    assert len(logged["test/acc"]) == 2

    # The same weights evaluated in one process on all 256 test images give exactly the logged numbers.
    loaded = checkpoints.load(run / "checkpoints" / "last.ckpt")
    dm = loaded.datamodule
    dm.setup()
    with torch.inference_mode():
        logits = loaded.net(dm.normalize(dm.test_set.images))
    acc = (logits.argmax(1) == dm.test_set.labels).float().mean().item()
    loss = F.cross_entropy(logits, dm.test_set.labels).item()
    assert logged["test/acc"][-1] == acc
    assert abs(logged["test/loss"][-1] - loss) < 1e-5
