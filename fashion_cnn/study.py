"""Run a study: ``python -m fashion_cnn.study STUDY.yaml [--workers N] [--storage URL] [--dir DIR]``.

Each trial is an ordinary fit run (:func:`fashion_cnn.fit.train`) in ``<dir>/lightning_logs/version_N`` with its
config.yaml, checkpoints and TensorBoard events. Optuna samples, prunes and stores: by default in
``<dir>/study.db`` (SQLite); ``--storage`` takes any Optuna RDB URL (PostgreSQL, MySQL), or ``journal:PATH`` for a
journal file on a shared filesystem, so processes on several machines can join one study (docs/studies.md).

Resuming: run the same command again. Finished trials are kept. A trial whose process died (SIGKILL, a lost node)
stops sending its heartbeat and, after ``3 x --heartbeat`` seconds, is retried: from its run's last.ckpt when it
saved one (in the same run directory), else from the start (heartbeats need an RDB storage: SQLite or a server). A
trial stopped by Ctrl-C or SIGTERM, or refused for its inputs (no dataset, a full disk), is retried the same way when
the study runs again; a search trial whose values cannot run together is recorded as failed, and the search goes on.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import torch
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from fashion_cnn import commands, compare, evaluate, fit, resume, study_file
from fashion_cnn.checkpoints import load
from fashion_cnn.errors import FashionCNNError, OptionsError
from fashion_cnn.module import TrainingDiverged
from fashion_cnn.runs import newest, study_run_dir
from fashion_cnn.storage import STORAGE_ENV, open_storage, storage_url

PROG = "python -m fashion_cnn.study"
SPARE = "spare"  # a trial's user attribute: started when nothing was left to run; stopped at once, not counted
DEFINITION = "definition"  # the study's user attribute that says what it is (study_file.Study.definition)
PRECISION = "precision"  # the precision its trials train in on the machine that created it (Study.precision_here)
WAIT_POLL_S = 1  # seconds between a waiting worker's looks at the trials running elsewhere
AGAIN = "run the same study command again, and the trial continues from it"  # how a stopped trial goes on


class StudyError(FashionCNNError):
    """A study that cannot be run or joined as asked."""


def open_study(spec: study_file.Study, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study (the first process) or join it; refuse a name already used for another study."""
    direction = spec.direction if spec.is_search else "maximize"
    sampler = optuna.samplers.TPESampler() if spec.is_search else optuna.samplers.RandomSampler()
    pruner = spec.make_pruner() if spec.is_search else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name, direction=direction, sampler=sampler,
                                    pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    if created:
        for seed in spec.seeds:  # a repeat: one waiting trial per seed, each run exactly once
            study.enqueue_trial({"seed": seed})
        study.set_user_attr(PRECISION, spec.precision_here())
        study.set_user_attr(DEFINITION, spec.definition())  # last: joining processes wait for it
    for _ in range(60):
        known = study.user_attrs.get(DEFINITION)
        if known is not None:
            break
        time.sleep(1)
    if known != spec.definition():
        raise StudyError(f"the study name {spec.name} is already used by a study with another config, space or seeds "
                         f"(its runs' config: the base config's values with the overrides put in); give this one "
                         f"another name (name: in {spec.path}) or another --dir/--storage")
    theirs, here = study.user_attrs.get(PRECISION), spec.precision_here()
    if theirs != here:  # one study's trials must be alike: a machine whose CPU differs would train them otherwise
        raise StudyError(f"the study {spec.name} trains its trials in {theirs}, and this machine would train them in "
                         f"{here} (fit trains bfloat16 only on a GPU or a CPU with AVX512-BF16 or AMX): continue it on "
                         f"a machine like the one it started on, or give this one another name (name: in {spec.path})"
                         f" or another --dir/--storage")
    return study


class Stopped(KeyboardInterrupt):
    """A trial's fit was stopped (Ctrl-C: 130, SIGTERM: 143); the study stops with the same status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"stopped with status {status}")
        self.status = status


def _said_elsewhere(record: logging.LogRecord) -> bool:
    """A filter for Optuna's trial log, true for the records to keep. Optuna reports a trial stopped by Ctrl-C or
    SIGTERM, or refused for its inputs, as failed with a traceback (then a stopped one's value, None); fit and the
    study have said what happened, in one line each."""
    said = record.exc_info is not None and isinstance(record.exc_info[1], Stopped | FashionCNNError)
    return not said and not record.getMessage().endswith(" failed with value None.")


class RecordRun(L.Callback):
    """Records a trial's run directory as soon as the run has one, so a retry can find its last.ckpt."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.logger is not None and trainer.is_global_zero:
            self.trial.set_user_attr("run_dir", str(Path(trainer.logger.log_dir).absolute()))


def objective(spec: study_file.Study, study_dir: Path) -> Callable[[optuna.Trial], float]:
    """Optuna's objective: a trial is one fit run in ``study_dir`` with the trial's parameters (or seed); its value
    is the run's final test accuracy (a repeat) or its validation metric (a search)."""
    def run_trial(trial: optuna.Trial) -> float:
        if _is_spare(spec, trial):
            trial.set_user_attr(SPARE, True)
            raise optuna.TrialPruned("another worker took the last trial")
        if spec.is_search:
            params = {k: suggest(trial, k, d) for k, d in spec.space.items()}
        else:
            params = {"seed": trial.suggest_categorical("seed", spec.seeds)}
        argv = [*spec.fit_args(params), "--trainer.logger.init_args.save_dir", str(study_dir),
                "--trainer.logger.init_args.name", "lightning_logs", "--trainer.enable_progress_bar", "false"]
        if (last := _last_checkpoint_of_retried(trial, study_dir)) is not None:
            argv += ["--ckpt_path", str(last)]
            print(f"{PROG}: trial {trial.number} continues from {last}", flush=True)
        callbacks = [RecordRun(trial)]
        if spec.is_search:
            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=spec.metric))
        print(f"{PROG}: trial {trial.number}: {params}", flush=True)
        try:
            result = fit.train(argv, callbacks=callbacks, how_to_continue=AGAIN, parser_class=fit.RefusingParser)
        # a search's legitimate outcomes, which the same values would meet again (values fit refuses, its parser
        # too: the base config edited since the study checked the space, say): recorded as failed, in one line
        except (TrainingDiverged, OptionsError) as err:
            what = "diverged" if isinstance(err, TrainingDiverged) else "refused"
            print(f"{PROG}: trial {trial.number} {what}: {err}", flush=True)
            trial.set_user_attr(what, str(err))
            return float("nan")
        except FashionCNNError:  # its data, a full disk, a checkpoint: the same trial runs again once it is fixed
            _run_again(trial)
            raise
        if result.status != 0:  # Ctrl-C or SIGTERM
            _run_again(trial)
            raise Stopped(result.status)
        trial.set_user_attr("wall_s", result.wall_s)
        trial.set_user_attr("threads", torch.get_num_threads())  # its wall time depends on them (frontier)
        if (rss := resident_mb()) is not None:  # what the worker holds after this trial: a leak would grow it
            trial.set_user_attr("rss_mb", rss)
        for key in ("final/test_acc", "best/val/acc", "val/acc"):
            if key in result.metrics:
                trial.set_user_attr(key, result.metrics[key])
        if not spec.is_search:  # a repeat: its test accuracy, or with data.test=false its val-picked accuracy
            return result.metrics.get("final/test_acc", result.metrics.get("best/val/acc"))
        return result.metrics.get(f"best/{spec.metric}", result.metrics.get(spec.metric))

    return run_trial


def resident_mb() -> float | None:
    """This process's resident memory now, in MB (Linux's /proc; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def suggest(trial: optuna.Trial, key: str, d: optuna.distributions.BaseDistribution) -> Any:
    """Optuna's suggestion for one parameter of the space."""
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(key, d.choices)
    if isinstance(d, optuna.distributions.IntDistribution):
        return trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)


def _last_checkpoint_of_retried(trial: optuna.Trial, study_dir: Path) -> Path | None:
    """Where a retried trial continues: the last.ckpt of the attempt that died last (None: it saved none)."""
    history = RetryHeartbeatStaleTrialCallback.retry_history(_frozen(trial))
    run_dir = trial.study.trials[history[-1]].user_attrs.get("run_dir") if history else None
    return resume.last_checkpoint(study_run_dir(Path(run_dir), study_dir)) if run_dir else None


def _run_again(trial: optuna.Trial) -> None:
    """Queue the trial to run again when the study is run again, from its run's last.ckpt if it saved one. Without a
    limit: a user's stop or a problem they fix costs nothing (a dead worker's trial is retried at most 3 times)."""
    RetryHeartbeatStaleTrialCallback(max_retry=None)(trial.study, _frozen(trial))


def _frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The trial as stored, system attributes included (Optuna 5's Trial no longer shows them)."""
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def _is_spare(spec: study_file.Study, trial: optuna.Trial) -> bool:
    """Whether this trial is one too many: workers decide to start a trial at the same moment, so one may get a
    fresh trial where there was none left to run. Trial numbers are given out atomically: a new trial runs only
    if fewer than ``trials`` new trials came before it; a repeat runs only the seeds enqueued for it (and retries).
    """
    if "fixed_params" in _frozen(trial).system_attrs:  # an enqueued seed, or a retry
        return False
    if not spec.is_search:
        return True
    earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    return sum(not t.user_attrs.get(SPARE) and "failed_trial" not in t.system_attrs for t in earlier) >= spec.trials


def progress(spec: study_file.Study, study: optuna.Study) -> tuple[int, int, int]:
    """(finished, running, waiting) trials; a failed trial that was retried is not counted."""
    trials = study.get_trials(deepcopy=False)
    trials = [t for t in trials if not t.user_attrs.get(SPARE)]
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    finished = sum(t.state.is_finished() and t.number not in retried for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return finished, running, waiting


def work(spec: study_file.Study, study: optuna.Study, study_dir: Path, heartbeat: int, heartbeats: bool = True) -> None:
    """Run trials until the study has all it needs; with other workers on the same storage, each takes its own.
    ``heartbeats``: whether the storage has them (an RDB storage), so that a dead worker's trial is retried."""
    target = spec.trials if spec.is_search else len(spec.seeds)
    run_trial = objective(spec, study_dir)
    logging.getLogger("optuna.study._optimize").addFilter(_said_elsewhere)  # where Optuna logs a trial's end; once
    said_waiting = False
    while True:
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: retried (RetryHeartbeatStaleTrialCallback)
        finished, running, waiting = progress(spec, study)
        if finished >= target:
            return
        if not waiting and finished + running >= target:
            if not said_waiting:  # the rest are running elsewhere (or are stale and will be retried)
                print(waiting_line(study, heartbeats), file=sys.stderr, flush=True)
                said_waiting = True
            # not a whole heartbeat: the study command ends when its last worker does, so this one sees the end soon
            time.sleep(min(heartbeat, WAIT_POLL_S))
            continue
        study.optimize(run_trial, n_trials=1)


def waiting_line(study: optuna.Study, heartbeats: bool) -> str:
    """What a worker with nothing left to start waits for, in one line (and, where no heartbeat can tell a dead
    worker, that the wait may never end)."""
    numbers = ", ".join(str(t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    line = f"{PROG}: waiting for trial(s) {numbers}, running in other processes"
    if not heartbeats:
        line += (" (this storage has no heartbeats, so the trial of a worker that died is never finished: if no "
                 "worker runs it any more, stop this one; an RDB storage, SQLite or a server, retries such trials)")
    return line


def main(argv: list[str] | None = None) -> int:
    """``python -m fashion_cnn.study``: its exit status (:mod:`fashion_cnn.commands` lists them)."""
    p = commands.parser(PROG, "Run a study file: repeated seeds or a search (Optuna); resumable, shareable.")
    p.add_argument("study_file", help="a study YAML file (see studies/)")
    p.add_argument("--dir", help="the study's directory (default: lightning_logs/studies/<name>)")
    p.add_argument("--storage", help=f"an Optuna storage URL (default: ${STORAGE_ENV}, else sqlite:///<dir>/study.db); "
                   "postgresql://..., or journal:PATH for a journal file on a shared filesystem")
    p.add_argument("--workers", type=commands.positive, default=default_workers(),
                   help="trial processes on this machine, the cores split evenly (default: one per core, at "
                   f"most {MAX_DEFAULT_WORKERS}, here {default_workers()}); 1 gives each trial every core")
    p.add_argument("--heartbeat", type=commands.positive, default=10,
                   help="seconds between a running trial's heartbeats; silent for 3x this, it is retried")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return commands.run(PROG, lambda: _run(args, argv if argv is not None else sys.argv[1:]))


MAX_DEFAULT_WORKERS = 8  # each worker holds its own copy of the data and model (about 1 GB RSS)


def usable_cpus() -> int:
    """The CPUs this process may run on: a SLURM job's or a container's share, not the whole machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """One single-threaded trial per usable core: these small networks use a second thread poorly, so on 2 cores two
    1-thread workers ran 1.07x the trials per hour of one 2-thread worker (docs/studies.md)."""
    return max(1, min(usable_cpus(), MAX_DEFAULT_WORKERS))


def _run(args, argv: list[str]) -> int:
    spec = study_file.load(args.study_file)
    study_dir = Path(args.dir or Path("lightning_logs") / "studies" / spec.name).absolute()
    own = f"sqlite:///{study_dir / 'study.db'}"
    url = storage_url(args.storage, own)
    if url == own:
        commands.check_writable(study_dir, "--dir")
        study_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url, args.heartbeat)  # a server that cannot be reached: refused here, before any run
    study = open_study(spec, storage)
    if args.worker or args.workers == 1:
        try:
            work(spec, study, study_dir, args.heartbeat, isinstance(storage, optuna.storages.RDBStorage))
        except Stopped as stopped:
            print(f"{PROG}: stopped; run the same command again to continue (the trial resumes)", file=sys.stderr)
            return stopped.status
    else:
        status = _spawn_workers(args, argv)
        if status:
            return status
    if not args.worker:
        print(compare.report([study_dir], storage=storage, study_name=spec.name), flush=True)
        if spec.is_search:
            print(winner(spec, study, study_dir), flush=True)
    return 0


def winner(spec: study_file.Study, study: optuna.Study, study_dir: Path) -> str:
    """The search's best trial, its test accuracy measured once (then kept in the study), and a repeat file for it."""
    try:
        best = study.best_trial
    except ValueError:
        return f"{PROG}: no trial completed, so no winner"
    run_dir = study_run_dir(Path(best.user_attrs["run_dir"]), study_dir)
    ckpt = newest(run_dir / "checkpoints", "best*.ckpt")
    if ckpt is None:
        return f"{PROG}: the best trial {best.number} left no best checkpoint"
    key = "winner_test_acc"
    if study.user_attrs.get(key, {}).get("trial") != best.number:  # the test set is read once per winner
        preds, _, _ = evaluate.predictions_on(load(ckpt))
        study.set_user_attr(key, {"trial": best.number, "acc": float(preds.accuracy), "ckpt": str(ckpt)})
    acc = study.user_attrs[key]["acc"]
    repeat = study_dir / "winner_repeats.yaml"
    repeat.write_text(yaml.safe_dump({
        "name": f"{spec.name}_winner", "base": str(spec.base),
        # The base config's protocol (its whole training set, its last epoch): comparable with its own repeats.
        "overrides": {**spec.overrides, **best.params},
        "repeat": {"seeds": [0, 1, 2, 3, 4]}}, sort_keys=False))
    return (f"Winner: trial {best.number} {best.params}, {spec.metric} {best.value:.4f}; its test accuracy, "
            f"measured once: {100 * acc:.2f}% ({ckpt}).\nRepeat it over seeds: {PROG} {repeat}")


def _spawn_workers(args, argv: list[str]) -> int:
    """``--workers N``: N copies of this command joining the same study, the cores split between them."""
    threads = max(1, usable_cpus() // args.workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    base = [a for a in argv if not a.startswith("--workers")]
    if "--workers" in argv:  # "--workers N" as two words
        i = argv.index("--workers")
        base = argv[:i] + argv[i + 2:]
    procs = [subprocess.Popen([sys.executable, "-m", "fashion_cnn.study", *base, "--worker"], env=env)
             for _ in range(args.workers)]

    def forward(signum: int, frame: object) -> None:
        # SIGTERM sent to this process alone (a container's PID 1, `kill <pid>`) would leave the workers training
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        statuses = [proc.wait() for proc in procs]  # each stops its trial, saying how to go on
        return max(128 - status if status < 0 else status for status in statuses)  # killed by signal N: 128 + N
    except KeyboardInterrupt:
        for proc in procs:
            proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
