"""The project's side of the benchmark's protocol (turns.py), as a Lightning callback.

bench.py adds it to ``python -m fashion_cnn.fit`` with ``--trainer.callbacks+=benchmarks.callback.BenchWorker``.
It lives apart from turns.py because it needs Lightning, which the notebook and floor workers must not import.
"""

from __future__ import annotations

import time

import lightning as L

from benchmarks.turns import report, wait_for_turn


class BenchWorker(L.Callback):
    """Makes a training run one of the benchmark's workers: it waits for its turn before each training epoch (when
    turns are on) and reports each epoch, train and test, as a ``BENCH`` line with ``test/acc``."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wait_for_turn()
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The test runs as the validation loop, right after the epoch's training steps; a sanity check runs it
        # before any epoch has started.
        if trainer.sanity_checking:
            return
        report(epoch=trainer.current_epoch + 1, seconds=time.perf_counter() - self._start,
               acc=float(trainer.callback_metrics["test/acc"]))
