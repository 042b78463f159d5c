"""Train: ``python -m fashion_cnn.fit [--config seed|fast|tiny|quick|strong|gpu|FILE] [--trainer.max_epochs 5] ...``

Built on LightningCLI: every argument of the Trainer, of :class:`~fashion_cnn.module.FashionClassifier`
(``--model.*``) and of :class:`~fashion_cnn.datamodule.FashionMNISTDataModule` (``--data.*``) can be set on
the command line or in a YAML file; ``--help`` lists them and ``--print_config`` shows the resolved config.
The shipped ``configs/seed.yaml`` (the notebook's experiment) is always read first; ``--config`` files override it.
A run, as :func:`train` reads: parse and check, take the run's directory, build, train, test, report.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import gc
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fashion_cnn import cluster, config, resume, runs
from fashion_cnn.checkpoints import RunCheckpoint
from fashion_cnn.commands import INTERRUPTED, TERMINATED, OneLineUsage, check_writable, run
from fashion_cnn.config import SAVE_DIR_OPTION, ConfigError
from fashion_cnn.datamodule import FashionMNISTDataModule
from fashion_cnn.errors import FashionCNNError, OptionsError, one_line
from fashion_cnn.module import FashionClassifier

PROG = "python -m fashion_cnn.fit"


class DiskFull(FashionCNNError):
    """The disk filled up during a run; earlier checkpoints are intact (they are saved atomically)."""


@dataclass
class FitResult:
    """What one fit run left: its exit status, run directory, metrics (the last value of each logged one, and
    ``best/val/acc``, the best checkpoint's score, with a validation split) and wall time."""

    status: int
    run_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


class FitParser(OneLineUsage, LightningArgumentParser):
    """LightningCLI's parser with the project's one-line usage errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # jsonargparse makes one for a network's init_args
        kwargs["prog"] = kwargs.get("prog") or PROG  # with no prog: errors would be signed __main__.py
        super().__init__(*args, **kwargs)


class RefusingParser(FitParser):
    """The fit parser for a fit run inside another command (a study's trial, or its check of a study file): a
    usage error raises :class:`~fashion_cnn.errors.OptionsError` for that command to report, instead of exiting."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise OptionsError(one_line(message))


class FashionCLI(LightningCLI):
    """LightningCLI that checks the config, puts the run in its directory (``run_dir``) and adds the checkpoints; it
    parses and builds, and :func:`train` runs."""

    def __init__(self, *args: Any, run_dir: runs.RunDirectory | None = None,
                 extra_callbacks: Sequence[L.Callback] = (), **kwargs: Any) -> None:
        self.run_dir = run_dir if run_dir is not None else runs.RunDirectory()
        self.extra_callbacks = tuple(extra_callbacks)  # a study's pruning callback, say
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume training from this checkpoint; `last`: the newest run's last.ckpt")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        config.check_values(self.config)  # here, before LightningCLI seeds with seed_everything

    def before_instantiate_classes(self) -> None:
        trainer, logs = self.config.trainer, self.config.trainer.logger
        # first: in a SLURM step it decides whether this task is a rank of a larger run or a run of its own
        self.cluster_plugins = cluster.environment_plugins(trainer)
        tensorboard = bool(logs) and getattr(logs, "class_path", "").endswith("TensorBoardLogger")
        if tensorboard:  # `save_dir: ~/runs` in a config: the shell expands only the command line
            logs.init_args.save_dir = os.path.expanduser(logs.init_args.save_dir)
        log_root = Path(logs.init_args.save_dir) / logs.init_args.name if tensorboard else None
        if log_root is not None:
            check_writable(log_root, SAVE_DIR_OPTION)
        # DDP's other ranks and the first process of another node log nothing
        launching = rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"
        continued = resume.plan(self.config, log_root) if self.config.ckpt_path else None
        if continued is not None and continued.run is not None:
            resume.log_into_its_run(logs, log_root, continued)
            self.save_config_callback = None  # keep the run's config.yaml: it reruns the experiment from scratch
            if launching:
                self.run_dir.take_over(continued.run, continued.step)
        elif log_root is not None and logs.init_args.version is not None:
            runs.check_new_version(log_root, logs.init_args.version)
        elif log_root is not None and launching:
            logs.init_args.version = self.run_dir.reserve(log_root)
        config.use_this_cpus_precision(trainer, PROG, say=launching)  # last: a refused command says only why

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self.run_dir.new:  # the logger has its number; config.yaml records none, so that `--config
            self.config.trainer.logger.init_args.version = None  # <run>/config.yaml` starts a new run, not this one

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = self.config_init.get("trainer", {})  # run=False: no subcommand level in the config
        callbacks = list(trainer.get("callbacks") or [])
        if trainer.get("enable_progress_bar") is False:  # so that flag also switches off the configured bar
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        if trainer.get("enable_checkpointing") is not False:
            callbacks.extend(self._checkpoints())
        callbacks.extend(self.extra_callbacks)
        if trainer.get("logger") is False:  # no run directory: do not write config.yaml into the working directory
            self.save_config_callback = None
            # nothing to log the learning rate to: Lightning would stop the run at its start with a traceback
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        plugins = trainer.get("plugins") or []
        plugins = [*(plugins if isinstance(plugins, list) else [plugins]), *self.cluster_plugins]
        try:
            return super().instantiate_trainer(**kwargs, callbacks=callbacks, plugins=plugins)
        except ValueError as err:  # Lightning's word for a strategy or accelerator name it does not know
            raise ConfigError(str(err)) from None

    def _checkpoints(self) -> list[ModelCheckpoint]:
        """last.ckpt after every epoch (what a stopped run resumes from), and with a validation split, first (it is
        ``trainer.checkpoint_callback``), the epoch with the best validation accuracy. Without one there is no "best":
        choosing an epoch by its test accuracy would report an optimistic figure."""
        # Its own callback: Lightning writes save_last's copy only in a step that saved a top-k checkpoint, so a
        # monitored callback's last.ckpt would stay at the best epoch, and a stopped run would lose the epochs since.
        last = RunCheckpoint(filename="last", save_top_k=1, enable_version_counter=False)
        if not self.datamodule.hparams.val_size:
            return [last]
        best = RunCheckpoint(monitor="val/acc", mode="max", filename="best-epoch{epoch:02d}-val_acc{val/acc:.4f}",
                             auto_insert_metric_name=False, enable_version_counter=False)
        return [best, last]


class _ParseOnly(FashionCLI):
    """fit's CLI that parses and checks a config: it neither seeds, takes a run directory nor builds anything."""

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        self.config.seed_everything = False  # LightningCLI seeds next: nothing here will use the seed

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def make_cli(argv: list[str], cli_class: type[FashionCLI] = FashionCLI, parser_class: type[FitParser] = FitParser,
             **kwargs: Any) -> FashionCLI:
    """fit's LightningCLI for ``argv`` (shipped config names already resolved), parsed and built but not run:
    seed.yaml beneath every ``--config``; ``kwargs`` go to ``cli_class``."""
    # args= given explicitly (resolved names, or a study's trial): Lightning would warn that it is not sys.argv.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return cli_class(FashionClassifier, FashionMNISTDataModule, run=False, args=argv, parser_class=parser_class,
                     parser_kwargs={"prog": PROG, "default_config_files": [str(config.DEFAULT_CONFIG)]}, **kwargs)


def check_config(argv: list[str]) -> None:
    """Parse and check a fit command line as fit would, without running anything: a problem raises
    :class:`~fashion_cnn.errors.FashionCNNError` (a usage error too, as :class:`RefusingParser` raises it)."""
    make_cli(config.resolve_config_names(argv), cli_class=_ParseOnly, parser_class=RefusingParser)


def main(argv: list[str] | None = None) -> int:
    """Train and test as the command line says; the exit status (:mod:`fashion_cnn.commands` lists them)."""
    return run(PROG, lambda: train(argv).status)


def train(argv: list[str] | None = None, callbacks: Sequence[L.Callback] = (), how_to_continue: str | None = None,
          parser_class: type[FitParser] = FitParser) -> FitResult:
    """One fit run, as ``python -m fashion_cnn.fit ARGV`` does it, with ``callbacks`` added to the configured ones;
    ``how_to_continue``: what a stopped run tells the user to do with its last.ckpt (a study's way), instead of
    fit's. Returns a :class:`FitResult` (status 130 after Ctrl-C, 143 after SIGTERM); bad input raises
    :class:`~fashion_cnn.errors.FashionCNNError` (a usage error ``SystemExit(2)``, or with ``RefusingParser`` an
    ``OptionsError``), and what a callback raises (``optuna.TrialPruned``) goes through."""
    argv = sys.argv[1:] if argv is None else argv
    # jsonargparse keeps its parser, and through it the CLI with its trainer, model and data, in a ContextVar: in a
    # copied context all of it is dropped on return, and collecting Lightning's reference cycles at once gives the
    # memory back now rather than at the interpreter's shutdown (a study's next trial would otherwise add to it).
    try:
        with _sigterm_stops_the_run():
            return contextvars.copy_context().run(_fit_and_test, argv, tuple(callbacks), how_to_continue, parser_class)
    finally:
        gc.collect()


def _fit_and_test(argv: list[str], callbacks: tuple[L.Callback, ...], how_to_continue: str | None,
                  parser_class: type[FitParser]) -> FitResult:
    start = time.perf_counter()
    cli: FashionCLI | None = None
    try:
        with runs.RunDirectory() as run_dir:  # a run that stops or fails before its first step leaves no trace
            # parse and check the config, take the run's directory, build the data, the model and the trainer
            cli = make_cli(config.resolve_config_names(argv), parser_class=parser_class, run_dir=run_dir,
                           extra_callbacks=callbacks)
            trainer, model, data = cli.trainer, cli.model, cli.datamodule
            run_dir.watch(trainer)
            # train: test loss and accuracy after every epoch, last.ckpt too (and the best epoch on a validation split)
            trainer.fit(model, datamodule=data, ckpt_path=cli.config.ckpt_path, weights_only=True)
            if trainer.interrupted:  # Ctrl-C, where Lightning returns after its graceful shutdown
                raise KeyboardInterrupt
            # the final test, of the epoch validation picked, else of the last epoch; never run to choose a model
            if data.hparams.test:
                trainer.test(model, datamodule=data, ckpt_path=_best(trainer), weights_only=True)
    except BaseException as err:
        return _stopped(err, cli, how_to_continue, start)
    return _result(0, trainer, start)


def _best(trainer: L.Trainer) -> str | None:
    """The best validation epoch's checkpoint; None (the weights as trained) without a validation split."""
    checkpoint = trainer.checkpoint_callback
    # its path, not "best": Lightning warns about "best" whenever there are two checkpoint callbacks
    return (checkpoint.best_model_path or None) if checkpoint is not None and checkpoint.monitor else None


def _stopped(err: BaseException, cli: FashionCLI | None, how_to_continue: str | None, start: float) -> FitResult:
    """fit's failure policy: Ctrl-C (status 130, not Lightning's 1, which reads as bad input) and SIGTERM (143, not
    Lightning's 0, which a scheduler would take for done) end the run with one line that says how to continue;
    Lightning's refusals and a full disk become one-line errors; anything else goes on to the caller."""
    trainer = cli.trainer if cli is not None else None
    sigterm = isinstance(err, SIGTERMException)  # a SystemExit, as is Lightning 2.6's exit(1) after Ctrl-C
    interrupted = not sigterm and trainer is not None and (isinstance(err, KeyboardInterrupt) or (
        isinstance(err, SystemExit) and trainer.interrupted))
    if sigterm or interrupted:
        if interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C after the first one
        what, status = ("interrupted", INTERRUPTED) if interrupted else ("stopped by SIGTERM", TERMINATED)
        print(f"{PROG}: {what}; {_how_to_continue(cli, how_to_continue)}", file=sys.stderr)
        return _result(status, trainer, start) if trainer is not None else FitResult(status, None)
    if isinstance(err, MisconfigurationException):  # Lightning's word for a Trainer setting that cannot work here
        raise ConfigError(str(err)) from None
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFull(f"no space left on the device while writing {err.filename or 'the run'}; free some space, "
                       f"then {_how_to_continue(cli, how_to_continue)}") from None
    raise err


def _how_to_continue(cli: FashionCLI | None, how: str | None) -> str:
    """How to continue a stopped run: from the last.ckpt this process saved, else the checkpoint it resumed from."""
    trainer = cli.trainer if cli is not None else None
    saved = [c.best_model_path for c in (trainer.checkpoint_callbacks if trainer is not None else [])
             if isinstance(c, ModelCheckpoint) and not c.monitor]  # last.ckpt: the unmonitored callback's one file
    path = next((p for p in saved if p), cli.config.ckpt_path if cli is not None else None)
    return resume.how_to_continue(Path(path) if path else None, how)


def _result(status: int, trainer: L.Trainer, start: float) -> FitResult:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best/{checkpoint.monitor}"] = float(checkpoint.best_model_score)
    log_dir = trainer.logger.log_dir if trainer.logger is not None else None
    return FitResult(status, Path(log_dir).absolute() if log_dir else None, metrics, time.perf_counter() - start)


@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    """SIGTERM while Lightning's own handler is not in place (parsing the config, loading the data, restoring a
    checkpoint) stops the run as Lightning's does, instead of killing the process silently. While Lightning trains it
    calls this handler after its own, and this one leaves the stop to Lightning (at the end of the step)."""

    def stop(signum: int, frame: object) -> None:
        if signal.getsignal(signal.SIGTERM) is stop:
            raise SIGTERMException

    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
