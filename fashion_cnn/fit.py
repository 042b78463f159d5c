"""Train: ``python -m fashion_cnn.fit [--config seed|fast|tiny|quick|strong|gpu|FILE] [--trainer.max_epochs 5] ...``

Built on LightningCLI: every argument of the Trainer, of :class:`~fashion_cnn.module.FashionClassifier`
(``--model.*``) and of :class:`~fashion_cnn.datamodule.FashionMNISTDataModule` (``--data.*``) can be set on
the command line or in a YAML file; ``--help`` lists them and ``--print_config`` shows the resolved config.
The shipped ``configs/seed.yaml`` (the notebook's experiment) is always read first; ``--config`` files override it.
"""

from __future__ import annotations

import contextvars
import errno
import gc
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fashion_cnn import checkpoints, resume, runs
from fashion_cnn.checkpoints import RunCheckpoint
from fashion_cnn.commands import INTERRUPTED, TERMINATED, OneLineUsage, check_writable, missing_dirs, remove_empty, run
from fashion_cnn.datamodule import FashionMNISTDataModule, check_data_options
from fashion_cnn.errors import FashionCNNError, OptionsError, one_line
from fashion_cnn.module import FashionClassifier, check_optimizer_options

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "seed.yaml"  # the notebook's experiment, read beneath every --config
PROG = "python -m fashion_cnn.fit"
_SAID: set[str] = set()  # notices this process has printed: the same one is not repeated for each fit in it
SAVE_DIR_OPTION = "--trainer.logger.init_args.save_dir"  # where fit's runs go (save_dir/lightning_logs/version_N)
MAX_SEED = 2**32 - 1  # Lightning seeds numpy too, whose seeds are 32-bit


class ConfigError(FashionCNNError):
    """A configuration that cannot work; reported as one line before any work starts."""


class DiskFull(FashionCNNError):
    """The disk filled up during a run; earlier checkpoints are intact (they are saved atomically)."""


@dataclass
class FitResult:
    """What one fit run left: its exit status, run directory, metrics and wall time (:func:`train` returns it).

    ``metrics`` holds the last logged value of every metric (``val/acc``, ``test/acc``, ``final/test_acc``, ...) and
    ``best/<monitor>``: the best checkpoint's score (``best/val/acc`` with a validation split).
    """

    status: int
    run_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


class FitParser(OneLineUsage, LightningArgumentParser):
    """LightningCLI's parser with the project's one-line usage errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # jsonargparse makes a parser of this class for a network's init_args without a prog: its errors would
        # otherwise be signed by the script's file name (__main__.py)
        kwargs["prog"] = kwargs.get("prog") or PROG
        super().__init__(*args, **kwargs)


class RefusingParser(FitParser):
    """The fit parser for a fit run inside another command (a study's trial, or its check of a study file): a
    usage error raises :class:`~fashion_cnn.errors.OptionsError` for that command to report, instead of exiting."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise OptionsError(one_line(message))


class FashionCLI(LightningCLI):
    """LightningCLI with the project's defaults, its checkpoint policy and its run directories."""

    new_run: Path | None = None  # the version_N directory this process reserved for a new run
    new_dirs: tuple[Path, ...] = ()  # the directories above it that this process created too, deepest first
    resumed: tuple[Path, int, dict[str, bytes | None]] | None = None  # the run resumed into: its dir, step, files
    start_step: int = 0  # the global step training starts from (a resumed checkpoint's)

    def __init__(self, *args: Any, extra_callbacks: Sequence[L.Callback] = (), **kwargs: Any) -> None:
        self.extra_callbacks = tuple(extra_callbacks)  # added by train(callbacks=...), e.g. a study's pruning callback
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume training from this checkpoint; `last`: the newest run's last.ckpt")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        check_values(self.config)  # here, before LightningCLI seeds with seed_everything

    def before_instantiate_classes(self) -> None:
        trainer = self.config.trainer
        if _is_tensorboard(trainer.logger):  # `save_dir: ~/runs` in a config: the shell expands only the command line
            trainer.logger.init_args.save_dir = os.path.expanduser(trainer.logger.init_args.save_dir)
        logger, log_root = trainer.logger, _log_root(trainer.logger)
        if log_root is not None:
            check_writable(log_root, SAVE_DIR_OPTION)
        in_its_run = bool(self.config.ckpt_path) and self._resume_into_its_run()
        if log_root is not None and logger.init_args.version is not None and not in_its_run:
            runs.check_new_version(log_root, logger.init_args.version)
        if log_root is not None and logger.init_args.version is None and _is_launching_process():
            self.new_dirs = tuple(missing_dirs(log_root))
            self.new_run = runs.reserve_run_dir(log_root)
            logger.init_args.version = int(self.new_run.name.removeprefix("version_"))
        precision = precision_for_this_cpu(trainer.precision, str(trainer.accelerator))
        fallback = (f"{PROG}: this CPU has no native bfloat16 (AVX512-BF16 or AMX), where {trainer.precision} is "
                    f"emulated and several times slower: training in {precision} instead")
        # last: a command refused above says only why; once per process: a study's trials would repeat it
        if precision != trainer.precision and _is_launching_process() and fallback not in _SAID:
            _SAID.add(fallback)
            print(fallback, file=sys.stderr)
        trainer.precision = precision

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BaseException:
            self.release_new_run()
            raise
        if self.new_run is not None:  # the logger has its number; config.yaml records none, so that `--config
            self.config.trainer.logger.init_args.version = None  # <run>/config.yaml` starts a new run, not this one

    def release_new_run(self, trained: bool = False) -> None:
        """Remove the run directory this process reserved (and the log directories above it that it made) when the
        run failed before training a step: it leaves nothing behind (once Lightning's setup has run, an events file
        and config.yaml are there, which report and compare would take for a run). A run that ``trained`` (one a
        study pruned, say, or whose loss became NaN) keeps its logs and checkpoints."""
        if self.new_run is not None and not trained:
            shutil.rmtree(self.new_run, ignore_errors=True)
        remove_empty((self.new_run, *self.new_dirs))

    def clean_up_after_stop(self, trainer: L.Trainer) -> None:
        """Undo what a run that stopped (an error, Ctrl-C, SIGTERM) wrote without training a step: its new run
        directory, or in a resumed run the files Lightning's setup rewrote."""
        # under ddp_spawn/ddp_fork the workers train: this process's global step stays where it was whatever they did
        spawned = isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)
        self.release_new_run(trained=spawned or trainer.global_step > self.start_step)
        if not spawned:
            self.restore_resumed_run(trainer.global_step)

    def restore_resumed_run(self, step: int) -> None:
        """After a resume into its run that stopped at ``step`` (the trainer's global step) before training one
        (refused in Lightning's setup, as by the one-cycle length check in ``configure_optimizers``), remove what the
        setup wrote there: a new events file, a rewritten hparams.yaml. A refused resume leaves the run as it was;
        one that trained keeps its logs."""
        # step is 0 until Lightning restores the loop, after setup; DDP's other processes leave the files to rank 0
        if self.resumed is None or step > self.resumed[1] or not _is_launching_process():
            return
        run, _, files = self.resumed
        try:  # called while another error propagates: that one is the one to report
            for path in run.iterdir():
                if path.is_file() and path.name not in files:
                    path.unlink()
            for name, content in files.items():
                if content is not None and (run / name).is_file() and (run / name).read_bytes() != content:
                    (run / name).write_bytes(content)
        except OSError:
            pass

    def _resume_into_its_run(self) -> bool:
        """Check the checkpoint to resume from (weights only: a pickle that would run code is refused), and keep
        logging into its run's TensorBoard directory, wherever that lies, instead of starting an unrelated version
        (True: it does; a checkpoint outside a ``version_N/checkpoints/`` starts a new run)."""
        logger = self.config.trainer.logger
        log_root = _log_root(logger)
        path = checkpoints.resolve(self.config.ckpt_path, log_root or "lightning_logs", SAVE_DIR_OPTION)
        checkpoint = checkpoints.read(path)
        net = self.config.model.net
        resume.check_same_network(checkpoint, path, net.as_dict() if net is not None else None)
        resume.check_same_optimizer(checkpoint, path, self.config.model.bn_bias_lr_scale)
        resume.check_same_recipe(checkpoint, path, self.config.model.as_dict(), self.config.data.as_dict())
        if self.config.model.schedule == "onecycle":
            resume.check_same_length(path, self.config.trainer.as_dict())
        step = self.start_step = checkpoint["global_step"]
        self.config.ckpt_path = str(path)
        run = runs.run_dir_of(path)
        if log_root is not None and path.parent.name == "checkpoints" and (found := runs.RUN_DIR.fullmatch(run.name)):
            # the checkpoint's own run, wherever it lies: a run copied or moved elsewhere (whose config.yaml still
            # names the old place) continues there, not in a new run beside the original
            if run.parent.resolve() != log_root.resolve():
                check_writable(run, SAVE_DIR_OPTION)
                logger.init_args.save_dir, logger.init_args.name = str(run.parent.parent), run.parent.name
            logger.init_args.version = int(found.group(1))
            # What the interrupted run logged after its checkpoint is logged again on resuming: purge_step hides
            # those first copies in TensorBoard, so every step and epoch appears once.
            logger.dict_kwargs = {**(logger.get("dict_kwargs") or {}), "purge_step": step}
            self.save_config_callback = None  # keep the run's config.yaml: it reruns the experiment from scratch
            # top-level file names, and the content of the small ones Lightning rewrites (it opens new events files)
            self.resumed = (run, step, {p.name: p.read_bytes() if p.suffix == ".yaml" else None
                                        for p in run.iterdir() if p.is_file()})
            return True
        return False

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
        try:
            return super().instantiate_trainer(**kwargs, callbacks=callbacks)
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


def check_values(config: Namespace) -> None:
    """Refuse a parsed fit config (a jsonargparse Namespace) whose values parse but cannot run together; checks
    only the values, so a study checks its trials' configs with it before training any."""
    max_epochs = config.trainer.max_epochs
    if max_epochs is not None and max_epochs <= 0:
        raise OptionsError(f"trainer.max_epochs must be positive, got {max_epochs}")
    seed = config.seed_everything
    if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
        raise OptionsError(f"seed_everything must be between 0 and {MAX_SEED} (numpy's seeds), got {seed}")
    check_final_shift(config.model.final_shift, config.data.augment, config.data.max_shift)
    check_optimizer_options(config.model.nesterov, config.model.momentum)
    for key in ("optimizer", "lr_scheduler"):  # in every config.yaml, as null: older runs' files must still parse
        if config.get(key) is not None:  # Lightning would replace the module's optimizer, ignoring model.lr
            raise OptionsError(f"--{key} is not used by this project (it would silently replace the recipe's "
                               f"optimizer and schedule): set model.lr, model.momentum, model.nesterov, "
                               f"model.weight_decay and model.schedule instead")
    check_data_options(**{k: config.data[k] for k in ("augment", "erase", "flip", "test", "val_size")})


def check_final_shift(final_shift: int, augment: bool, max_shift: int) -> None:
    """Refuse final-test views shifted further than training shifted its images: such views are images the network
    never saw, which lower the final test (2-pixel views after 1-pixel training did, docs/results.md) while the
    per-epoch tests, which leave them out, would not show it. ``evaluate --shift`` stays free to try them."""
    if final_shift and not augment:
        raise OptionsError(f"model.final_shift={final_shift} is for networks trained with random shifts, and "
                           f"data.augment is false: add data.augment=true, or set model.final_shift to 0")
    if final_shift > max_shift:
        raise OptionsError(f"model.final_shift={final_shift} is larger than training's random shifts "
                           f"(data.max_shift={max_shift}): set model.final_shift to at most {max_shift}")


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them oneDNN emulates bfloat16."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # another architecture's or an older build: assume not
        return False


def precision_for_this_cpu(precision: str | int | None, accelerator: str) -> str | int | None:
    """``precision``, or ``32-true`` where it is bfloat16 (or 16-mixed, which Lightning runs as bfloat16 there) on a
    CPU without native bfloat16 (no AVX512-BF16 or AMX): there oneDNN emulates it, several times slower than float32
    (``python -m benchmarks.net_step --precision bf16-mixed``), so the presets that ask for bfloat16 to be fast
    (fast, strong) would be the slowest."""
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()  # what accelerator "auto" picks first
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not gpu)
    # Lightning runs 16-mixed on a CPU as bf16-mixed (it has no float16 autocast there)
    bf16 = str(precision).startswith("bf16") or str(precision) in ("16", "16-mixed")
    return "32-true" if bf16 and on_cpu and not cpu_has_bfloat16() else precision


def _is_launching_process() -> bool:
    """True unless this is a DDP worker of rank > 0, or the first process of node > 0: those log nothing."""
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"


def _is_tensorboard(logger) -> bool:
    return bool(logger) and getattr(logger, "class_path", "").endswith("TensorBoardLogger")


def _log_root(logger) -> Path | None:
    """Where a TensorBoard logger's runs go (``save_dir/name``); None for another logger, or none."""
    return Path(logger.init_args.save_dir) / logger.init_args.name if _is_tensorboard(logger) else None


def shipped_configs() -> list[str]:
    """The names ``--config`` takes for the shipped configs (seed, fast, ...), as in ``fashion_cnn/configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_names(argv: list[str]) -> list[str]:
    """Let ``--config fast`` (or ``-c fast``) mean the shipped ``configs/fast.yaml``; a name that is neither that nor
    a file is one line. A config given inline (``--config '{model: {lr: 0.1}}'``) is left to LightningCLI."""
    out = list(argv)
    for i, arg in enumerate(out):
        value, prefix = (out[i + 1], None) if arg in ("--config", "-c") and i + 1 < len(out) else (None, None)
        if arg.startswith("--config="):
            value, prefix = arg.split("=", 1)[1], "--config="
        if value and Path(value).is_file():
            _check_config_file(Path(value))
        if not value or Path(value).exists() or not isinstance(_yaml_value(value), str):
            continue
        shipped = CONFIG_DIR / f"{value}.yaml"
        if not shipped.is_file():
            raise ConfigError(f"--config {value}: no such file, and not a shipped config (one of "
                              f"{', '.join(shipped_configs())}); give one of those names or a YAML file's path")
        if prefix:
            out[i] = prefix + str(shipped)
        else:
            out[i + 1] = str(shipped)
    return out


def _check_config_file(path: Path) -> None:
    """Refuse a ``--config`` file jsonargparse would stop on with a traceback or a bare "Unexpected config": one
    that is not UTF-8 text (a checkpoint, or YAML saved as UTF-16), an empty one, and one with an empty section
    (``data:`` with nothing under it)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a UTF-8 text file; give a YAML config saved as UTF-8 (a checkpoint "
                          f"goes to --ckpt_path)") from None
    except yaml.YAMLError:
        return  # jsonargparse says where
    if values is None:
        raise ConfigError(f"--config {path}: the file has no settings (it is empty, or only comments); give a YAML "
                          f"mapping such as `model: {{lr: 0.1}}`")
    empty = [key for key in ("trainer", "model", "data") if isinstance(values, dict) and key in values
             and values[key] is None]
    if empty:
        raise ConfigError(f"--config {path}: `{empty[0]}:` has nothing under it; give its options, or leave it out")


def _yaml_value(text: str) -> object:
    """What YAML makes of ``text`` (a plain word stays a str; a mapping is an inline config); None if it cannot."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Train and test as the command line says; the exit status (:mod:`fashion_cnn.commands` lists them)."""
    return run(PROG, lambda: train(argv).status)


def train(argv: list[str] | None = None, callbacks: Sequence[L.Callback] = (), how_to_continue: str | None = None,
          parser_class: type[FitParser] = FitParser) -> FitResult:
    """One fit run, as ``python -m fashion_cnn.fit ARGV`` does it, with ``callbacks`` added to the configured ones.
    ``how_to_continue``: what a stopped run's message tells the user to do with its last.ckpt, for a caller that
    resumes it its own way (a study's trial), instead of fit's ``--ckpt_path last``.

    Returns what it left (:class:`FitResult`); a problem with the inputs raises
    :class:`~fashion_cnn.errors.FashionCNNError`, a usage error ``SystemExit(2)`` (with ``parser_class=
    RefusingParser``, an :class:`~fashion_cnn.errors.OptionsError`), and an exception raised by a callback (such as
    ``optuna.TrialPruned``) goes through to the caller.
    """
    # jsonargparse leaves its parser in a ContextVar, and the parser keeps the CLI alive, with its trainer, model
    # and data: in a copied context, all of that is dropped when the run returns. Lightning's objects refer to
    # each other in cycles, so collect them at once: the memory then goes back before the interpreter's shutdown,
    # which is when a process that imported torch reaches its peak RSS (docs/performance.md).
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if in_main_thread else None
    try:
        return contextvars.copy_context().run(partial(_fit_and_test, argv, tuple(callbacks), how_to_continue,
                                                      parser_class))
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        gc.collect()


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM while Lightning's own handler is not in place (parsing the config, loading the data, restoring a
    checkpoint): the run stops the way Lightning's stops it, with its one line and status 143, instead of dying
    silently. While Lightning trains it calls this after its own handler, and this leaves the stop to Lightning
    (at the end of the step)."""
    if signal.getsignal(signal.SIGTERM) is _stop_on_sigterm:
        raise SIGTERMException


def _fit_and_test(argv: list[str] | None, callbacks: tuple[L.Callback, ...] = (), how_to_continue: str | None = None,
                  parser_class: type[FitParser] = FitParser) -> FitResult:
    start = time.perf_counter()
    argv = resolve_config_names(sys.argv[1:] if argv is None else argv)
    try:
        cli = make_cli(argv, parser_class=parser_class, extra_callbacks=callbacks)
    except MisconfigurationException as err:  # Lightning's word for a Trainer setting that cannot work here
        raise ConfigError(str(err)) from None
    except SIGTERMException:  # before there is a trainer (a new run's directory is already released)
        print(f"{PROG}: stopped by SIGTERM before training began: start it again", file=sys.stderr)
        return FitResult(TERMINATED, None, {}, time.perf_counter() - start)
    trainer = cli.trainer
    try:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True)
        if trainer.interrupted:  # Ctrl-C, where Lightning returns after its graceful shutdown
            return _stopped(cli, INTERRUPTED, start, how_to_continue)
        checkpoint = trainer.checkpoint_callback  # no best one (no validation split, or no epoch evaluated): last epoch
        # its path, not "best": Lightning warns about "best" whenever there are two checkpoint callbacks
        best = (checkpoint.best_model_path or None) if checkpoint is not None and checkpoint.monitor else None
        if cli.datamodule.hparams.test:  # data.test=false (model selection): the test set is never read
            trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, weights_only=True)
    except SIGTERMException:
        # Lightning stops at the next step and exits 0 by default; a scheduler must not take that as done.
        return _stopped(cli, TERMINATED, start, how_to_continue)
    except OSError as err:  # (an except clause below does not see what this one raises: each cleans up)
        cli.clean_up_after_stop(trainer)
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFull(f"no space left on the device while writing {err.filename or 'the run'}; free some space, "
                       f"then {_where_to_resume(trainer, how_to_continue, cli.config.ckpt_path)}") from None
    except BaseException as err:
        if isinstance(err, SystemExit) and trainer.interrupted:  # Ctrl-C: Lightning 2.6 ends its shutdown with exit(1)
            return _stopped(cli, INTERRUPTED, start, how_to_continue)
        cli.clean_up_after_stop(trainer)
        raise
    return _result(0, trainer, start)


def make_cli(argv: list[str], cli_class: type[FashionCLI] = FashionCLI, parser_class: type[FitParser] = FitParser,
             **kwargs: Any) -> FashionCLI:
    """fit's LightningCLI for ``argv`` (shipped config names already resolved), parsed and built but not run:
    seed.yaml beneath every ``--config``; ``kwargs`` go to ``cli_class``."""
    # args= given explicitly (resolved names, or a study's trial): Lightning would warn that it is not sys.argv.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return cli_class(FashionClassifier, FashionMNISTDataModule, run=False, args=argv, parser_class=parser_class,
                     parser_kwargs={"prog": PROG, "default_config_files": [str(DEFAULT_CONFIG)]}, **kwargs)


def _result(status: int, trainer: L.Trainer, start: float) -> FitResult:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best/{checkpoint.monitor}"] = float(checkpoint.best_model_score)
    log_dir = trainer.logger.log_dir if trainer.logger is not None else None
    return FitResult(status, Path(log_dir).absolute() if log_dir else None, metrics, time.perf_counter() - start)


def _stopped(cli: FashionCLI, status: int, start: float, how_to_continue: str | None) -> FitResult:
    """Ctrl-C (status 130, not Lightning's 1, which reads as bad input) or SIGTERM (143, not Lightning's 0, which a
    scheduler would take for done): how to continue, in one line. A run stopped before it trained a step leaves
    nothing behind, as a failed one."""
    if status == INTERRUPTED:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C after the first one
    cli.clean_up_after_stop(cli.trainer)
    what = "interrupted" if status == INTERRUPTED else "stopped by SIGTERM"
    print(f"{PROG}: {what}; {_where_to_resume(cli.trainer, how_to_continue, cli.config.ckpt_path)}", file=sys.stderr)
    return _result(status, cli.trainer, start)


def _where_to_resume(trainer: L.Trainer, how_to_continue: str | None = None, resumed: str | None = None) -> str:
    """How to continue a stopped run: from its last complete checkpoint (``how_to_continue``, or fit's way; before
    this process saved one, the checkpoint it ``resumed`` from), or from the start if it has none."""
    saved = [c.best_model_path for c in trainer.checkpoint_callbacks
             if isinstance(c, ModelCheckpoint) and not c.monitor]  # last.ckpt: the unmonitored callback's one file
    path = next((p for p in saved if p), resumed)
    last = Path(path) if path else None
    if last is None or not last.is_file():
        return "it had saved no checkpoint yet: start it again"
    epoch = checkpoints.read(last)["epoch"] + 1
    how = how_to_continue or f"continue with the same command and --ckpt_path last (or --ckpt_path {last})"
    return f"{last} (end of epoch {epoch}) is intact: {how}"


if __name__ == "__main__":
    sys.exit(main())
