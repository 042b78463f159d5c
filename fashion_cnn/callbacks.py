"""Trainer callbacks: the notebook-style per-epoch summary line, a progress bar that keeps batch logs short,
TensorBoard pictures and the hparams tab."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import lightning as L
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from fashion_cnn.analysis import confusion_matrix, per_class_scores, predictions
from fashion_cnn.data_files import CLASSES
from fashion_cnn.figures import evaluation_figures
from fashion_cnn.nets import ViewAverage


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
        # as LightningModule.print decides: a bar that shows nothing (refresh_rate 0) would drop the line
        if bar is not None and getattr(bar, "is_enabled", True):
            bar.print(line)
        else:
            print(line, flush=True)


class BatchLogProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar at a terminal; in a file or a pipe (a batch job's log) no bar, whose every redraw would
    be kept there, but one line at most every ``interval`` seconds inside a long epoch, validation or test::

        [3] Training 412/938 (44%), 60 s, 6.9 it/s, train/loss 0.5120

    The bars write to ``sys.stdout``, so that is the stream whose ``isatty()`` decides, once per ``setup``.
    ``print`` (the per-epoch summary line uses it) writes through the bar at a terminal and as a plain line in a file.

    Args:
        refresh_rate: at a terminal, redraw the bar every this many batches (0: no bar and no lines at all).
        process_position: as TQDMProgressBar's.
        leave: as TQDMProgressBar's.
        interval: in a file, the least number of seconds between two progress lines of one stage.
    """

    clock = staticmethod(time.monotonic)  # seconds; a test gives its own

    def __init__(self, refresh_rate: NonNegativeInt = 1, process_position: NonNegativeInt = 0, leave: bool = False,
                 interval: PositiveFloat = 60.0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.interval = float(interval)
        self.at_terminal = _isatty(sys.stdout)
        self._clocks: dict[str, tuple[float, float]] = {}  # stage: (its start, its last line), by self.clock

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.at_terminal = _isatty(sys.stdout)

    @property
    def is_enabled(self) -> bool:
        """Whether the bars are drawn, only at a terminal: Lightning creates them disabled otherwise, and
        ``LightningModule.print`` then prints plain lines."""
        return super().is_enabled and self.at_terminal

    @property
    def shows_progress(self) -> bool:
        """Whether this process shows progress at all, as a bar or as lines: not on the ranks other than zero
        (Lightning disables their bars), nor with refresh_rate 0."""
        return super().is_enabled

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        if self.at_terminal:
            super().print(*args, sep=sep, **kwargs)
        elif self.shows_progress:
            print(sep.join(map(str, args)), end=kwargs.get("end", "\n"), file=kwargs.get("file") or sys.stdout,
                  flush=True)

    def _start(self, stage: str) -> None:
        now = self.clock()
        self._clocks[stage] = (now, now)

    def _due(self, stage: str) -> bool:
        """Whether a progress line of ``stage`` is due: in a file, ``interval`` seconds after its start or last line."""
        if self.at_terminal or not self.shows_progress or stage not in self._clocks:
            return False
        return self.clock() - self._clocks[stage][1] >= self.interval

    def _progress_line(self, stage: str, description: str, n: int, total: int | float | None,
                       metrics: dict[str, Any] | None = None) -> None:
        """Prints how far ``stage`` has got: ``n`` of ``total`` batches, the time since it started, its rate."""
        start = self._clocks[stage][0]
        now = self.clock()
        self._clocks[stage] = (start, now)
        total = convert_inf(total)
        elapsed = now - start  # at least interval: the line is due
        rate = n / elapsed
        parts = [f"{description} {n}/{total} ({100 * n / total:.0f}%)" if total else f"{description} {n}",
                 f"{elapsed:.0f} s", f"{rate:.1f} it/s" if rate >= 1 else f"{1 / rate:.1f} s/it"]
        parts += [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in (metrics or {}).items()]
        self.print(", ".join(parts))

    def _epoch_prefix(self, trainer: L.Trainer) -> str:
        # numbered from 1 as the per-epoch summary lines are; a lone validate or test has no epoch
        return f"[{trainer.current_epoch + 1}] " if trainer.state.fn == "fit" else ""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._start("train")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._due("train"):
            # the bar's metrics but the run's number and the last evaluation's, which the epoch line printed
            metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items()
                       if k != "v_num" and not k.startswith(("val/", "test/"))}
            self._progress_line("train", f"{self._epoch_prefix(trainer)}{self.train_description}", batch_idx + 1,
                                self.total_train_batches, metrics)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._start("validation")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if self._due("validation"):
            description = self.sanity_check_description if trainer.sanity_checking else self.validation_description
            self._progress_line("validation", f"{self._epoch_prefix(trainer)}{description}", batch_idx + 1,
                                self.total_val_batches_current_dataloader)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_test_start(trainer, pl_module)
        self._start("test")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if self._due("test"):
            self._progress_line("test", self.test_description, batch_idx + 1,
                                self.total_test_batches_current_dataloader)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._start("predict")

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if self._due("predict"):
            self._progress_line("predict", self.predict_description, batch_idx + 1,
                                self.total_predict_batches_current_dataloader)


def _isatty(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (False for None, as sys.stdout is without a console, or a closed stream)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The trainer's TensorBoardLogger, if it has one (pictures and the hparams tab need TensorBoard)."""
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class PredictionPictures(L.Callback):
    """Every ``every_n_epochs`` epochs and at the end of training, logs to TensorBoard what the accuracy curve
    cannot show: the test-set confusion matrix, a grid of test images with their predictions (mostly the most
    confident mistakes, plus a few correct ones) and each class's test accuracy (``test_class_acc/<class>``).

    It re-predicts the datamodule's in-memory test set on rank zero only, instead of collecting outputs in
    ``validation_step``, so the module stays unaware of it.

    Args:
        every_n_epochs: how often to log (the last epoch is always logged).
        mistakes: how many mistaken images to show at most.
        correct: how many correctly classified images to show next to them.
    """

    def __init__(self, every_n_epochs: PositiveInt = 5, mistakes: NonNegativeInt = 24,
                 correct: NonNegativeInt = 8) -> None:
        self.every_n_epochs, self.mistakes, self.correct = every_n_epochs, mistakes, correct
        self._logged_step: int | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.should_stop or (trainer.max_epochs is not None and epoch >= trainer.max_epochs)
        if epoch % self.every_n_epochs == 0 or last:
            self.log_pictures(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Training can also end on max_steps or max_time, in the middle of an epoch: show the final model too.
        if self._logged_step != trainer.global_step:  # (current_epoch has already moved on here)
            self.log_pictures(trainer, pl_module)

    def log_pictures(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The test set's confusion matrix, per-class accuracy and most confident mistakes, logged at this step."""
        logger = tensorboard_logger(trainer)
        test_set = getattr(trainer.datamodule, "test_set", None)
        if trainer.sanity_checking or not trainer.is_global_zero or logger is None or test_set is None:
            return
        epoch, step = trainer.current_epoch + 1, trainer.global_step
        self._logged_step = step
        net = getattr(pl_module, "net", pl_module)
        if pl_module.hparams.get("eval_mirror"):  # the per-epoch test's views; in net's mode, which logits restores
            net = ViewAverage(net).train(net.training)
        dm = trainer.datamodule
        preds = predictions(net, test_set.images, test_set.labels, dm.normalize, batch_size=dm.hparams.eval_batch_size)
        cm = confusion_matrix(preds.labels, preds.predicted, len(CLASSES))
        recall = per_class_scores(cm)["recall"]
        logger.log_metrics({f"test_class_acc/{name}": float(recall[i]) for i, name in enumerate(CLASSES)}, step)
        title = f"epoch {epoch}: test accuracy {100 * preds.accuracy:.2f}%"
        matrix, grid = evaluation_figures(cm, preds, test_set.images, title, self.mistakes, self.correct)
        logger.experiment.add_figure("test/confusion_matrix", matrix, step, close=True)
        logger.experiment.add_figure("test/predictions", grid, step, close=True)


class HParamsSummary(L.Callback):
    """Fills TensorBoard's HPARAMS tab: the run's hyperparameters next to its final test accuracy and loss.

    ``TensorBoardLogger.log_hyperparams(params, metrics)`` would also log the metrics again as scalars, giving
    ``final/test_acc`` a second point; the module already logs them, so this writes only the hparams summary,
    whose metric columns TensorBoard fills from those scalars.
    """

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "final/")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A model-selection run (data.test=false) has no final test: compare runs by their validation metrics.
        dm = trainer.datamodule
        if dm is not None and not dm.hparams.get("test", True):
            self._write(trainer, pl_module, "val/")

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> None:
        """The HPARAMS summary with the run's ``prefix*`` metrics as its metric columns."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
        logger = tensorboard_logger(trainer)
        if not trainer.is_global_zero or logger is None or not metrics:
            return
        params = {**flatten(dict(pl_module.hparams), "model."), "trainer.max_epochs": trainer.max_epochs}
        if trainer.datamodule is not None:
            params.update(flatten(dict(trainer.datamodule.hparams), "data."))
        if "PL_GLOBAL_SEED" in os.environ:  # set by seed_everything
            params["seed_everything"] = int(os.environ["PL_GLOBAL_SEED"])
        params = {k: "None" if v is None else v for k, v in params.items()}  # TensorBoard: str, int, float, bool
        # SummaryWriter.file_writer: the event file of the run itself (add_hparams would start a new run directory);
        # tests/test_pictures.py reads the HPARAMS tab back, so a change in torch's writer shows there.
        for summary in hparams(params, metrics):
            logger.experiment.file_writer.add_summary(summary)
        logger.experiment.flush()


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``prefix + "a.b.c"`` keys, each value kept if it is a plain scalar or None, else its
    ``str``; keys such as LightningCLI's ``_instantiator`` (bookkeeping, not an option) are left out."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
    return out
