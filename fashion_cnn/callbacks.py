"""Trainer callbacks: the notebook-style per-epoch summary line."""

from __future__ import annotations

import time

import lightning as L


class EpochSummary(L.Callback):
    """Prints one line per epoch, like the notebook's ``[epoch] Test loss ..., Accuracy ...``, plus its duration."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not hasattr(self, "_start"):
            return
        metrics = trainer.callback_metrics
        parts = [f"{split.capitalize()} loss {float(metrics[f'{split}/loss']):.4f}, "
                 f"accuracy {100 * float(metrics[f'{split}/acc']):.2f}%"
                 for split in ("val", "test") if f"{split}/acc" in metrics]
        line = f"[{trainer.current_epoch + 1}] {' | '.join(parts)} ({time.perf_counter() - self._start:.1f} s)"
        bar = trainer.progress_bar_callback
        bar.print(line) if bar is not None and hasattr(bar, "print") else print(line, flush=True)
