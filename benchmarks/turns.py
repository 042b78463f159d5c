"""The project's side of ``bench.py``'s turn-taking: a callback that waits for its turn before each epoch.

Kept apart from ``bench.py`` so that the notebook and floor workers, which share that file, never import Lightning.
"""

from __future__ import annotations

import lightning as L

from benchmarks.bench import wait_for_turn


class TakeTurns(L.Callback):
    """Waits for the benchmark's go before each training epoch (``--trainer.callbacks+=benchmarks.turns.TakeTurns``)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wait_for_turn()
