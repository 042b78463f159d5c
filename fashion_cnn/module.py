"""The training module: a network, cross-entropy, SGD with momentum, and one set of metrics per split."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, restricted_number_type
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from fashion_cnn.data_files import NUM_CLASSES
from fashion_cnn.errors import FashionCNNError, OptionsError
from fashion_cnn.nets import SeedCNN, views

METRIC_SPLITS = ("train", "val", "test")


# SGD accepts any momentum, but from 1 on the steps never decay: a config with one fails when parsed
Momentum = restricted_number_type("Momentum", float, [(">=", 0), ("<", 1)], join="and")


def parameter_group_count(bn_bias_lr_scale: float) -> int:
    """The optimizer's parameter groups under ``bn_bias_lr_scale``: one at 1 (plain SGD over all parameters), two
    otherwise (the BatchNorm biases apart, at their own learning rate)."""
    return 1 if bn_bias_lr_scale == 1 else 2


class TrainingDiverged(FashionCNNError):
    """The training loss became NaN or infinite."""


def check_optimizer_options(nesterov: bool, momentum: float) -> None:
    """Refuse Nesterov without momentum, which torch refuses only when the optimizer is made, after the data loaded."""
    if nesterov and momentum == 0:
        raise OptionsError("model.nesterov needs momentum: set model.momentum above 0 (e.g. 0.9) or model.nesterov "
                           "false")


class FashionClassifier(L.LightningModule):
    """Trains ``net`` with cross-entropy and SGD (+ momentum), logging ``{split}/loss`` and ``{split}/acc``.

    Args:
        net: the network (default: the notebook's :class:`~fashion_cnn.nets.SeedCNN`).
        lr: learning rate (the peak rate with ``schedule: onecycle``).
        momentum: SGD momentum. With ``schedule: onecycle`` it is the centre of a cycle: momentum falls to
            ``momentum - s`` while the learning rate rises, and comes back to ``momentum + s`` as it anneals, with
            ``s = min(momentum, 1 - momentum) / 2`` (0.85-0.95 at 0.9, ``OneCycleLR``'s default cycle).
        nesterov: use Nesterov momentum.
        weight_decay: L2 weight decay.
        bn_bias_lr_scale: BatchNorm biases learn at ``lr`` times this, with ``weight_decay`` divided by it (so their
            decay per step stays the same), as airbench does with 64; 1 leaves them as the other weights.
        label_smoothing: cross-entropy label smoothing for training (evaluation uses the plain loss).
        schedule: ``constant`` (the notebook's) or ``onecycle`` (warm up to ``lr``, then anneal, per step).
        channels_last: channels-last memory format for the network: the same function, often faster convolutions
            (``make bench`` compares both on your machine).
        compile: ``torch.compile`` the network (in place, so checkpoints keep the plain ``net.*`` weights).
        eval_mirror: test-time augmentation in every evaluation (val, test, the final test, and evaluate/predict/
            export of the checkpoint): the mean of the logits of each image and of its mirror image. For networks
            trained with horizontal flips; it doubles the cost of evaluating.
        final_shift: more test-time augmentation, in the final test and in evaluate/predict/export of the
            checkpoint only: each image is also seen shifted by this many pixels down, up, right and left (with their
            mirror images under ``eval_mirror``). Five times the views, so the per-epoch evaluations (and the choice
            of the best checkpoint on val) leave it out. For networks trained with random shifts (``data.augment``):
            fit refuses it without them, or larger than ``data.max_shift``.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        lr: PositiveFloat = 0.01,
        momentum: Momentum = 0.5,
        nesterov: bool = False,
        weight_decay: NonNegativeFloat = 0.0,
        bn_bias_lr_scale: PositiveFloat = 1.0,
        label_smoothing: NonNegativeFloat = 0.0,
        schedule: Literal["constant", "onecycle"] = "constant",
        channels_last: bool = False,
        compile: bool = False,
        eval_mirror: bool = False,
        final_shift: NonNegativeInt = 0,
    ) -> None:
        super().__init__()
        Momentum(momentum)  # the same check for Python callers: ValueError outside [0, 1)
        self.save_hyperparameters()  # from a config, `net` is recorded as its class_path + init_args
        self.net = net if net is not None else SeedCNN()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        check_optimizer_options(nesterov, momentum)
        if bn_bias_lr_scale != 1 and not self._batchnorm_biases():
            raise OptionsError(f"model.bn_bias_lr_scale={bn_bias_lr_scale} does nothing: the network has no "
                               f"BatchNorm layers; drop it (or use a network with BatchNorm, e.g. StrongCNN)")
        if compile:
            self.net.compile()
        self.losses_finite: torch.Tensor | None = None  # off the CPU: whether every unchecked step's loss was finite
        self.planned_steps: int | None = None  # a resumed one-cycle schedule's length, from its checkpoint
        for split in METRIC_SPLITS:  # one metric object per split: self.train_acc, self.val_loss, ...
            # validate_args=False: the checks cost a host sync per batch, and labels were validated on load
            setattr(self, f"{split}_acc", MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False))
            if split != "train":  # the training loss is logged per step, not averaged
                setattr(self, f"{split}_loss", MeanMetric())

    def setup(self, stage: str) -> None:
        # A network whose first layer comes from the data (StrongCNN's `whiten`) sees 5,000 normalised training
        # images, as airbench's does; when a checkpoint is resumed, its weights replace these afterwards.
        if stage == "fit" and getattr(self.net, "whiten", False):
            datamodule = self.trainer.datamodule
            if getattr(datamodule, "train_set", None) is None:
                raise FashionCNNError("a network with whiten needs the training images to set its first layer: "
                                      "fit it with the FashionMNIST datamodule")
            self.net.init_from_data(datamodule.normalize(datamodule.train_set.images[:5000]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, 10] for normalised images [B, 1, 28, 28]."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        logging_step = self._is_logging_step()
        # Checking needs the loss on the host: free on CPU, a sync on GPU, so there only on logging steps; between
        # them a flag on the device collects it, checked before any checkpoint is saved (on_save_checkpoint)
        if logging_step or loss.device.type == "cpu":
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}: "
                    f"the learning rate is probably too high (model.lr={self.hparams.lr}); lower it and start again")
        else:
            finite = torch.isfinite(loss.detach())
            self.losses_finite = finite if self.losses_finite is None else self.losses_finite & finite
        self.train_acc.update(logits.detach(), labels)
        # A self.log call costs as much as a fair part of this small network's step (Lightning updates its result
        # collection each time), so the step loss is logged only on the steps the logger writes.
        if logging_step:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def _is_logging_step(self) -> bool:
        """Whether the logger writes this training step (what Lightning decides with ``log_every_n_steps``)."""
        every = self.trainer.log_every_n_steps
        return every > 0 and ((self.global_step + 1) % every == 0 or self.trainer.should_stop)

    def on_train_epoch_end(self) -> None:
        self.log("train/acc", self.train_acc.compute())
        self.train_acc.reset()

    def _evaluate(self, split: str, batch: tuple[torch.Tensor, torch.Tensor],
                  shift: int = 0) -> tuple[MeanMetric, MulticlassAccuracy]:
        images, labels = batch
        # nets.ViewAverage computes this for loaded checkpoints; wrapping self.net here would register its weights
        # twice in the state_dict and skip forward's channels-last input
        each = views(images, self.hparams.eval_mirror, shift, self.trainer.datamodule.black if shift else 0.0)
        # summed in float32: under bf16 autocast the logits are bfloat16, whose 8-bit mantissa would round the sum
        logits = sum(self(view).float() for view in each) / len(each)
        loss, acc = getattr(self, f"{split}_loss"), getattr(self, f"{split}_acc")
        loss.update(F.cross_entropy(logits, labels), weight=len(labels))
        acc.update(logits, labels)
        return loss, acc

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
                        ) -> None:
        split = self.trainer.datamodule.eval_splits[dataloader_idx]
        loss, acc = self._evaluate(split, batch)
        self.log(f"{split}/loss", loss, add_dataloader_idx=False)
        self.log(f"{split}/acc", acc, add_dataloader_idx=False, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        # The final test of a chosen checkpoint after fit; per-epoch test metrics are logged as test/* during fit.
        loss, acc = self._evaluate("test", batch, shift=self.hparams.final_shift)
        self.log("final/test_loss", loss)
        self.log("final/test_acc", acc)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        finite = self.losses_finite is None or bool(self.losses_finite)
        # every rank saves (rank 0 writes): a NaN seen by one rank alone still stops all before the write
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):  # never save diverged weights
            raise TrainingDiverged(
                f"training loss became NaN or infinite in epoch {self.current_epoch}, between the steps it is logged "
                f"at: the learning rate is probably too high (model.lr={self.hparams.lr}); lower it and start again "
                f"(the checkpoints saved before are kept)")
        # A resumed run continues after the checkpoint's step, so metrics logged before it must already be on disk:
        # flushing here means a run killed later loses none of what it showed before this checkpoint.
        for logger in self.loggers:
            logger.save()
        # Dropout and augmentation draw from torch's global RNG: saving it makes a resumed run bit-identical.
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["cuda_rng_states"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A one-cycle schedule is laid out over its run's steps; configure_optimizers compares (see there)
        schedulers = checkpoint.get("lr_schedulers") or []
        self.planned_steps = schedulers[0].get("total_steps") if schedulers else None
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if "cuda_rng_states" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng_states"])

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.SGD(self._parameter_groups(), lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov,
                                    weight_decay=hp.weight_decay)
        if hp.schedule == "constant":
            return optimizer
        # OneCycleLR cycles momentum between its own defaults (0.85, 0.95), whatever the optimizer's is, unless told;
        # rounded so that 0.9 gives exactly those defaults, with which the shipped recipes' figures were measured
        spread = min(hp.momentum, 1 - hp.momentum) / 2
        total = self.trainer.estimated_stepping_batches
        # Resumed for another number of steps, torch would fail with a traceback once past the old end. Checked here,
        # not in on_load_checkpoint: counting the steps there sets up the training data before the loop's state is
        # restored, and the resumed run would no longer be exact.
        if self.planned_steps is not None and self.planned_steps != total:
            raise FashionCNNError(f"this run's one-cycle schedule was laid out over {self.planned_steps} steps and "
                                  f"this config trains {total}: resume it with the run's own trainer.max_epochs (or "
                                  f"max_steps), devices, data.batch_size and data.val_size (to train longer, start "
                                  f"a new run with the longer schedule)")
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total,
            base_momentum=round(hp.momentum - spread, 12), max_momentum=round(hp.momentum + spread, 12))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _batchnorm_biases(self) -> set[int]:
        """The ids of the BatchNorm biases (``_BatchNorm``: also the SyncBatchNorm that DDP's sync_batchnorm swaps
        in before the optimizer is made)."""
        return {id(m.bias) for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine}

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """All parameters in one group, or the BatchNorm biases in a second (:func:`parameter_group_count`)."""
        hp = self.hparams
        if parameter_group_count(hp.bn_bias_lr_scale) == 1:
            return [{"params": list(self.parameters())}]
        biases = self._batchnorm_biases()
        # named, so that LearningRateMonitor's TensorBoard tags say which is which (lr-SGD/batchnorm_biases, not pg2)
        return [{"params": [p for p in self.parameters() if id(p) not in biases], "name": "weights"},
                {"params": [p for p in self.parameters() if id(p) in biases], "lr": hp.lr * hp.bn_bias_lr_scale,
                 "weight_decay": hp.weight_decay / hp.bn_bias_lr_scale, "name": "batchnorm_biases"}]
