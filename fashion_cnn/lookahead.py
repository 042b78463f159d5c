"""Lookahead as airbench uses it, a Trainer callback: ``--trainer.callbacks+=fashion_cnn.lookahead.Lookahead``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval, PositiveInt


class Lookahead(L.Callback):
    """Slow weights that trail the trained ones and are written back into them (Zhang et al., 2019; airbench's form).

    Every ``every`` optimizer steps the slow copy of the network's floating-point state (weights and BatchNorm
    statistics) moves towards the trained one, ``slow += (1 - d) * (trained - slow)``, and the trained network
    continues from the slow copy. ``d`` grows as the cube of the training progress, up to ``decay ** every`` at
    the last step, so early training is left alone; after the planned last step (``estimated_stepping_batches``:
    a run stopped early, or one without a set length, never gets there) the network is the slow copy. Unlike an
    exponential moving average that is only evaluated (Lightning's ``EMAWeightAveraging``), this changes the path
    training takes. The slow copy is saved in checkpoints, so a resumed run continues exactly.

    Args:
        every: optimizer steps between updates.
        decay: the per-step decay the updates amount to at the end of training.
    """

    def __init__(self, every: PositiveInt = 5, decay: ClosedUnitInterval = 0.95) -> None:
        self.every, self.decay = PositiveInt(every), ClosedUnitInterval(decay)  # checked for Python callers too
        self.slow: dict[str, torch.Tensor] | None = None
        self.last_step = -1  # with gradient accumulation a step spans several batches: update once per step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # a new fit starts afresh; a resumed one gets its slow copy back after this
            self.slow, self.last_step = None, -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = dict(_floats(pl_module))
        if self.slow is None:  # not restored from a checkpoint
            self.slow = {k: v.clone() for k, v in state.items()}
        else:  # restored: onto the devices of the weights it trails
            self.slow = {k: v.to(state[k].device) for k, v in self.slow.items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        if step == self.last_step:
            return
        self.last_step = step
        if step % self.every == 0:
            self._update(pl_module, self.decay**self.every * (step / total) ** 3)
        if step >= total:  # after the last step's update, as airbench: the network becomes the slow copy
            self._update(pl_module, 1.0)

    @torch.no_grad()
    def _update(self, pl_module: L.LightningModule, decay: float) -> None:
        for name, value in _floats(pl_module):
            slow = self.slow[name]
            slow.lerp_(value, 1 - decay)
            value.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self.slow}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.slow = state_dict["slow"]


def _floats(pl_module: L.LightningModule) -> list[tuple[str, torch.Tensor]]:
    """The network's floating-point state tensors (BatchNorm's integer batch counters are left out)."""
    return [(k, v) for k, v in pl_module.state_dict().items() if k.startswith("net.") and v.is_floating_point()]
