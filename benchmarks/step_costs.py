"""Microseconds per training step of the project's own per-step work, each next to the bare equivalent.

    python -m benchmarks.step_costs

One thread, batch 64, the seed config's shapes. What ``make bench``'s ``bare`` variant adds over ``floor_cl`` is
Lightning's loop plus these; what ``project`` adds over ``bare`` is its callbacks, logger and checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics.classification import MulticlassAccuracy

from fashion_cnn.data_files import NUM_CLASSES
from fashion_cnn.datamodule import FashionMNISTDataModule, TensorImages, keep_batch

BATCH, TRAIN = 64, 60_000


def per_call_us(fn: Callable[[], object], calls: int = 3000) -> float:
    """Microseconds per call of ``fn``, after 100 warm-up calls."""
    for _ in range(100):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def per_batch_us(batches: Iterable[object]) -> float:
    """Microseconds per item drawn from ``batches`` (a DataLoader, say)."""
    start, n = time.perf_counter(), 0
    for _ in batches:
        n += 1
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    """``python -m benchmarks.step_costs``: print the per-step costs, the project's next to the floor's."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logits, labels = torch.randn(BATCH, NUM_CLASSES), torch.randint(0, NUM_CLASSES, (BATCH,))
    metric = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False)
    correct = torch.zeros((), dtype=torch.long)
    images = torch.randint(0, 256, (BATCH, 28, 28), dtype=torch.uint8)
    data = TensorImages(torch.randint(0, 256, (TRAIN, 28, 28), dtype=torch.uint8),
                        torch.randint(0, NUM_CLASSES, (TRAIN,)))
    loader = DataLoader(data, batch_size=BATCH, collate_fn=keep_batch,
                        sampler=DistributedSampler(data, num_replicas=1, rank=0, shuffle=True))
    floor_batches = ((data.images[i], data.labels[i]) for i in torch.randperm(TRAIN).split(BATCH))
    normalize = FashionMNISTDataModule().normalize
    rows = [
        ("training accuracy", "torchmetrics update", per_call_us(lambda: metric.update(logits, labels)),
         "argmax == labels, sum", per_call_us(lambda: correct.add_((logits.argmax(1) == labels).sum()))),
        ("a batch of images", "DataLoader + sampler + gather", per_batch_us(loader),
         "randperm split + gather", per_batch_us(floor_batches)),
        ("normalising", "per batch (uint8 -> float)", per_call_us(lambda: normalize(images)),
         "done once before training", 0.0),
    ]
    print(f"{'per step':<18} {'the project':<30} {'us':>6}   {'bare equivalent':<26} {'us':>6}")
    for what, ours, ours_us, bare, bare_us in rows:
        print(f"{what:<18} {ours:<30} {ours_us:6.1f}   {bare:<26} {bare_us:6.1f}")


if __name__ == "__main__":
    main()
