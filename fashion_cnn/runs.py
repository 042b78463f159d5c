"""Run directories: one run's directory through its life (:class:`RunDirectory`), finding them (the newest, a
study's own), and reading what each holds (its config.yaml, its TensorBoard scalars). Checkpoint files:
:mod:`fashion_cnn.checkpoints`.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

from fashion_cnn.claim import RunClaim
from fashion_cnn.commands import missing_dirs, remove_empty
from fashion_cnn.errors import FashionCNNError, first_line

RUN_DIR = re.compile(r"version_(\d+)")  # a run's directory name under lightning_logs/
EVENTS = "events.out.tfevents.*"  # a run's TensorBoard event files
TRAIN_HINT = "train one with `make train` (or `python -m fashion_cnn.fit`)"


class RunError(FashionCNNError):
    """A run directory that cannot be found, read or used as asked; the message is one line: what is wrong and how
    to fix it."""


def reserve_run_dir(log_root: Path) -> Path:
    """Create the next ``version_N`` directory under ``log_root`` and return it.

    Lightning picks the next version by listing the directory, so two runs started at the same moment could pick
    the same one; creating it here with an exclusive ``mkdir`` (and trying the next number if another process won)
    gives every run its own.
    """
    log_root.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(m.group(1)) for p in log_root.iterdir() if (m := RUN_DIR.fullmatch(p.name))]
        run_dir = log_root / f"version_{max(taken, default=-1) + 1}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue


def check_new_version(log_root: Path, version: int | str) -> None:
    """Refuse a new run in the directory of an existing one (``trainer.logger.init_args.version`` naming it):
    Lightning would stop after loading the data with a traceback, and with its config.yaml removed would overwrite
    that run's checkpoints."""
    run_dir = log_root / (f"version_{version}" if isinstance(version, int) else str(version))
    if (run_dir / "config.yaml").exists() or (run_dir / "checkpoints").exists():
        raise RunError(f"{run_dir} already holds a run, and trainer.logger.init_args.version={version} would "
                       f"start a new one there: set it to null for a new run directory (or resume that run "
                       f"with --ckpt_path {run_dir / 'checkpoints' / 'last.ckpt'})")


class RunDirectory:
    """One process's run directory from the run's start to its end: a new ``version_N`` it reserved
    (:meth:`reserve`), or the run a checkpoint continues (:meth:`take_over`). It holds the run's claim meanwhile, so
    no other process trains into it (:mod:`fashion_cnn.claim`). Used as a ``with`` block around the run: a run that
    trained a step keeps everything it wrote; one that stopped or failed before (bad data, a full disk, Ctrl-C while
    loading) leaves no trace, so report and compare never take it for a run: a new run's directory goes (with the
    log directories made for it), a continued run's files are put back as they were."""

    def __init__(self) -> None:
        self.path: Path | None = None  # None until reserved or taken over (and in a DDP rank above 0: it writes none)
        self.new = False
        self.start_step = 0  # the global step training starts from: a continued checkpoint's
        self._made: list[Path] = []  # directories above a new run that it created, deepest first
        self._before: dict[str, bytes | None] = {}  # a continued run's files: contents of the small ones it rewrites
        self._trainer: L.Trainer | None = None
        self._claim: RunClaim | None = None

    def reserve(self, log_root: Path) -> int:
        """Reserve the next ``version_N`` under ``log_root`` for a new run; its number."""
        self._made = missing_dirs(log_root)
        self.path, self.new = reserve_run_dir(log_root), True
        self._claim = RunClaim(self.path).acquire()  # a resume of the newest run must not join it
        return int(self.path.name.removeprefix("version_"))

    def take_over(self, run_dir: Path, step: int) -> None:
        """Continue the run in ``run_dir`` from the checkpoint of global step ``step``."""
        self._claim = RunClaim(run_dir).acquire()  # another process training it: refused, naming that process
        self.path, self.start_step = run_dir, step
        # Lightning's setup opens a new events file and rewrites hparams.yaml before the first step
        self._before = {p.name: p.read_bytes() if p.suffix == ".yaml" else None
                        for p in run_dir.iterdir() if p.is_file()}

    def watch(self, trainer: L.Trainer) -> None:
        """The trainer whose global step, when the block ends, tells whether the run trained."""
        self._trainer = trainer

    @property
    def trained(self) -> bool:
        """Whether the run trained at least one step in this process."""
        if self._trainer is None:
            return False
        # under ddp_spawn/ddp_fork the workers train: this process's step stays where it was whatever they did
        return (isinstance(self._trainer.strategy.launcher, _MultiProcessingLauncher)
                or self._trainer.global_step > self.start_step)

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._claim is not None:
            self._claim.release()
        if self.path is None or self.trained:
            return
        if self.new:
            shutil.rmtree(self.path, ignore_errors=True)
            remove_empty(self._made)
            return
        try:  # while another error propagates, that one is the one to report
            for path in self.path.iterdir():
                if path.is_file() and path.name not in self._before:
                    path.unlink()
            for name, content in self._before.items():
                if content is not None and (self.path / name).is_file() and (self.path / name).read_bytes() != content:
                    (self.path / name).write_bytes(content)
        except OSError:
            pass


def newest_run(logs_dir: str | Path = "lightning_logs", holding: str = "checkpoints/*.ckpt",
               logs_option: str = "--logs_dir") -> Path:
    """The ``version_N`` directory with the highest N that holds files matching ``holding`` (a run that died
    early has no checkpoints, so it is passed over); ``logs_option``: the caller's option that names ``logs_dir``."""
    logs_dir = Path(logs_dir)
    runs = [(int(m.group(1)), p) for p in (logs_dir.iterdir() if logs_dir.is_dir() else [])
            if (m := RUN_DIR.fullmatch(p.name)) and any(p.glob(holding))]
    if not runs:
        raise RunError(f"no run in {logs_dir}/ has {holding} (looked in version_N/); "
                       f"{TRAIN_HINT}, or pass {logs_option}")
    return max(runs)[1]


def newest(directory: Path, pattern: str) -> Path | None:
    """The newest file in ``directory`` matching ``pattern``: a resumed run may have left an older best-*.ckpt beside
    the current one (whose name, with a lower epoch, sorts first)."""
    return max(directory.glob(pattern), key=lambda p: p.stat().st_mtime, default=None)


def run_scalars(run_dir: Path) -> dict[str, list[Any]]:
    """Every scalar a run logged to TensorBoard, by tag: its events (``step``, ``wall_time``, ``value``) in order.

    A resumed run (or a study's retried trial) has an events file per attempt; each resumed one starts at its
    checkpoint's step (fit's ``purge_step``), and what the stopped attempt logged from that step on is dropped, as
    TensorBoard shows the run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # slow import: only here
    from tensorboard.util import tb_logging

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}, purge_orphaned_data=True)
    # TensorBoard warns of every such purge ("Detected out of order event.step ..."), and its other warnings while
    # reading are about its own display (graphs, plugins): nothing a reader of these scalars can act on
    tb_logger = tb_logging.get_logger()
    level = tb_logger.level
    tb_logger.setLevel(logging.ERROR)
    try:
        events.Reload()
    except OSError as err:  # e.g. a directory where an events file should be
        raise RunError(f"{run_dir}: its TensorBoard events cannot be read ({first_line(err)}); move the run aside, "
                       f"or put back what fit wrote there") from None
    finally:
        tb_logger.setLevel(level)
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


def other_loggers(config: dict) -> list[str]:
    """The loggers a run's config (:func:`run_config`) names, by class name, when none of them is a
    TensorBoardLogger (``["CSVLogger"]``, say): such a run has no TensorBoard events, where report and compare read
    a run's scalars. [] when one is, or when it names none (Lightning's default logs to TensorBoard)."""
    logger = (config.get("trainer") or {}).get("logger")
    if logger is None or isinstance(logger, bool):
        return []
    entries = logger if isinstance(logger, list) else [logger]
    names = [str(e.get("class_path", "?") if isinstance(e, dict) else e).rsplit(".", 1)[-1] for e in entries]
    return [] if "TensorBoardLogger" in names else names


def run_config(run_dir: Path) -> dict:
    """A run's config.yaml as a mapping ({} when it has none); :class:`RunError` when it is not a fit config."""
    path = run_dir / "config.yaml"
    try:
        raw = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RunError(f"{path} cannot be read ({first_line(err)}): put back the "
                       f"config.yaml fit wrote there, or move the run aside") from None
    sections = ("trainer", "model", "data")
    if not isinstance(raw, dict) or any(not isinstance(raw.get(key) or {}, dict) for key in sections):
        raise RunError(f"{path}: not a fit config (a mapping with trainer, model and data); put back the config.yaml "
                       f"fit wrote there, or move the run aside")
    return raw


def run_dir_of(ckpt: Path) -> Path:
    """The run directory (parent of ``checkpoints/``), or the checkpoint's own directory outside a run."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def study_run_dir(run_dir: Path, study_dir: Path) -> Path:
    """A study's run as it lies now: a study keeps its runs in its own directory, so when that directory has been
    moved or copied (the database holds absolute paths), the run is the one of the same name beside the database."""
    here = study_dir / "lightning_logs" / run_dir.name
    return here if not run_dir.is_relative_to(study_dir.resolve()) and here.is_dir() else run_dir


