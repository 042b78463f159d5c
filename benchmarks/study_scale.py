"""What the study driver itself costs per trial as a study grows: trials that do almost nothing, run by the real
driver, at 20, 200 and 2,000 trials, on SQLite and PostgreSQL (and Optuna's gRPC proxy), with 1 and 4 workers.

    python -m benchmarks.study_scale [--trials 20,200,2000] [--storages sqlite,postgresql] [--workers 1,4]
        [--grpc-trials 200,2000] [--grpc-workers 4] [--repeat-trials 200,2000] [--skip sqlite:search:1:2000 ...]
        [--storage postgresql+psycopg://user@host/db] [--timeout 540] [--cold] [--check-proxy-heartbeats]
        [--profile DIR] [--json benchmarks/results/study_scale.json [--merge]]

Each combination is a fresh study (a fresh SQLite file, or a fresh database on the PostgreSQL server) run by W worker
processes started together, each ``python -m fashion_cnn.study STUDY --dir D --storage URL --worker``, as W hosts
would run it, but entered through this module (``--worker-entry``), which replaces ``fashion_cnn.fit.train`` with a
stub that records the trial's run directory (as the study's RecordRun callback does when a fit starts) and returns a
``FitResult`` at once. Everything else is the study's own: Optuna's ask (TPE) and tell, the heartbeat thread, the
stale-trial and progress checks, the spare-trial check, the trial's user attributes, the log lines. The search is
over one parameter (``model.lr``); ``--repeat-trials`` adds repeats of that many seeds. The storage's tables are made
before the workers start, as ``--workers N`` makes them (``--cold``: by the workers, all at once). A combination that
runs past ``--timeout`` is stopped, and its figures are those of the trials that finished.

Figures, per combination:

- s/trial: the study's wall time from its first trial's start to its last trial's end (read from the storage), over
  its trials: the driver's cost per trial with W workers sharing the machine (the inverse of its throughput), without
  the workers' start-up. First/last tenth: the same over the first and the last tenth of the trials to finish.
- worker CPU s/trial: the CPU time all workers spent in their trial loops, over the trials; apart, the CPU time of
  the throwaway PostgreSQL server's backends and of the gRPC proxy, over the trials.
- SQL statements and transactions per trial, counted in the workers (load-independent: what a change saves).
- start-up: a worker's seconds from its start to its trial loop (imports, the study file's check, opening the study;
  for a repeat, its creator enqueues the seeds there); ``check_fit_args``, the study file's check, which parses the
  fit configs of the space's ends, is given apart, with the number of times each worker ran it.
- spares (trials started when none was left, stopped at once), failed trials, ``database is locked`` lines in the
  workers' output, and whether the study finished exactly its trials.

PostgreSQL: a throwaway server (``initdb`` in a temporary directory, trust authentication on 127.0.0.1, as the
``postgres`` user when run as root), removed at the end; or ``--storage URL`` of an existing server's database. The
gRPC combinations put ``optuna.storages.run_grpc_proxy_server`` (in its own process, over the PostgreSQL storage
through ``optuna.storages.get_storage``, as Optuna advises) in front and give the workers a
``GrpcStorageProxy``: the study command has no URL for one, so the worker entry opens it for ``grpc://HOST:PORT``.
``--check-proxy-heartbeats`` kills a worker in its first trial and says whether another worker retries the trial, on
PostgreSQL directly and behind the proxy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from benchmarks.bench import ROOT, circumstances

PROG = "python -m benchmarks.study_scale"
FIXTURE = ROOT / "tests" / "data" / "fashion_mnist_small"
PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))
REPORT = "STUDY-SCALE "  # a worker's last line: what it measured of itself, as JSON
LOCKED = "database is locked"
WAIT_FOR_RETRY_S = 30  # how long the next worker may take to retry a dead one's trial (1 s heartbeats: 3 s grace)
DIE_ENV = "STUDY_SCALE_DIE_IN_TRIAL"  # the stub kills its own worker (SIGKILL) in this trial: a lost worker


# --- the worker: the real study command with a stub for the fit --------------------------------------------------


def stub_train(argv: list[str], callbacks=(), how_to_continue=None, parser_class=None):
    """``fashion_cnn.fit.train`` for a trial that does almost nothing: it records the run directory a fit would
    have (RecordRun's one write at the fit's start) and returns made-up metrics, a smooth function of ``model.lr``
    for a search (so TPE has something to model) or of the seed."""
    from fashion_cnn import fit, study

    start = time.perf_counter()
    values = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    save_dir = Path(argv[argv.index("--trainer.logger.init_args.save_dir") + 1])
    trial = next(c for c in callbacks if isinstance(c, study.RecordRun)).trial
    if os.environ.get(DIE_ENV) == str(trial.number):
        os.kill(os.getpid(), signal.SIGKILL)
    run_dir = save_dir / "lightning_logs" / f"version_{trial.number}"  # named, not made: the stub writes nothing
    trial.set_user_attr("run_dir", str(run_dir))
    if "model.lr" in values:
        x = 0.9 - 0.05 * abs(math.log(float(values["model.lr"]) / 0.1))
    else:
        x = 0.85 + int(values.get("seed_everything", 0)) % 97 / 1e4
    metrics = {"final/test_acc": x, "best/val/acc": x, "val/acc": x}
    return fit.FitResult(0, run_dir, metrics, time.perf_counter() - start)


def worker_entry(argv: list[str], profile: Path | None) -> int:
    """``fashion_cnn.study.main(argv)`` with the stub for the fit and ``grpc://HOST:PORT`` storages, timing its own
    parts; its last line of stdout is REPORT and a JSON object of them."""
    from fashion_cnn import fit, study, study_file

    facts: dict[str, Any] = {"imported": time.time(), "check_fit_args_s": 0.0, "check_fit_args_calls": 0,
                             "trials": 0}

    def timed(module: Any, name: str, before=None, after=None) -> None:
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            if before:
                before()
            try:
                return original(*args, **kwargs)
            finally:
                after(time.perf_counter() - start, time.process_time() - cpu)

        setattr(module, name, wrapper)

    def checked(wall: float, cpu: float) -> None:
        facts["check_fit_args_s"] += wall
        facts["check_fit_args_calls"] += 1

    def trained(wall: float, cpu: float) -> None:
        facts["trials"] += 1

    def opened(wall: float, cpu: float) -> None:
        facts["open_study_s"] = wall

    def loop_start() -> None:
        facts.update(loop_start=time.time(), statements=0, commits=0)

    def looped(wall: float, cpu: float) -> None:
        facts.update(loop_end=time.time(), loop_s=wall, loop_cpu_s=cpu)

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    facts.update(statements=0, commits=0)  # SQL statements and transactions, from the trial loop's start (its loop)

    def statement(*args) -> None:
        facts["statements"] += 1

    def commit(*args) -> None:
        facts["commits"] += 1

    event.listen(Engine, "before_cursor_execute", statement)
    event.listen(Engine, "commit", commit)

    timed(study_file, "check_fit_args", after=checked)  # study_file.load calls it by its module's name
    fit.train = stub_train
    timed(fit, "train", after=trained)
    timed(study, "open_study", after=opened)
    timed(study, "work", before=loop_start, after=looped)
    opening = study.open_storage

    def open_storage(url: str, heartbeat: int | None = None):
        if not url.startswith("grpc://"):
            return opening(url, heartbeat)
        from optuna.storages import GrpcStorageProxy

        host, _, port = url.removeprefix("grpc://").rpartition(":")
        proxy = GrpcStorageProxy(host=host, port=int(port))
        proxy.wait_server_ready(timeout=60)
        return proxy

    study.open_storage = open_storage
    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    status = study.main(argv)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    print(REPORT + json.dumps(facts), flush=True)
    return status


def proxy_entry(url: str, port: int) -> None:
    """Optuna's gRPC storage proxy on 127.0.0.1:``port`` over the storage at ``url`` (cached, as Optuna advises)."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.storages.run_grpc_proxy_server(optuna.storages.get_storage(url), host="127.0.0.1", port=port)


# --- storages ------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """A PostgreSQL server: its URL without a database, and its postmaster's process id where it is ours."""

    url: str
    pid: int | None = None


@contextlib.contextmanager
def postgres_server() -> Iterator[Server]:
    """A throwaway PostgreSQL server on 127.0.0.1, trust authentication, in a temporary directory removed at the end
    (run as ``postgres`` when this runs as root: initdb refuses root)."""
    tmp = Path(tempfile.mkdtemp(prefix="study-scale-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data, port, started = tmp / "data", free_port(), False
    try:
        if as_postgres:
            os.chown(tmp, *_uid_gid("postgres"))
        quiet = {"check": True, "stdout": subprocess.DEVNULL}
        subprocess.run([*as_postgres, PG_BINDIR / "initdb", "-D", data, "-A", "trust", "-U", "postgres"], **quiet)
        subprocess.run([*as_postgres, PG_BINDIR / "pg_ctl", "-D", data, "-l", tmp / "server.log", "-w", "-o",
                        f"-h 127.0.0.1 -p {port} -k {tmp}", "start"], **quiet)
        started = True
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield Server(f"postgresql+psycopg://postgres@127.0.0.1:{port}", pid)
    finally:
        if started:
            subprocess.run([*as_postgres, PG_BINDIR / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                           stdout=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", tmp])  # files the server owns, when this runs as root


def _uid_gid(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def new_database(server: Server, name: str) -> str:
    """A fresh database on the server, so that one combination's rows do not slow the next; its URL."""
    from sqlalchemy import create_engine

    engine = create_engine(f"{server.url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return f"{server.url}/{name}"


def cpu_seconds(pid: int | None, children: bool = False) -> float | None:
    """A process's CPU seconds so far (Linux's /proc), with ``children`` those of its children that have ended
    (a PostgreSQL server's: the backends of the connections that closed); None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, TypeError):
        return None
    ticks = sum(int(f) for f in fields[11:15 if children else 13])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def server_version(url: str) -> str | None:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return str(connection.exec_driver_sql("SHOW server_version").scalar())
    finally:
        engine.dispose()


@contextlib.contextmanager
def grpc_proxy(url: str, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """Optuna's gRPC proxy in its own process over the storage at ``url``; yields ``grpc://127.0.0.1:PORT`` and
    the process."""
    import warnings

    import optuna

    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.study_scale", "--proxy-entry", url, str(port)],
                                cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port).wait_server_ready(timeout=120)
        yield f"grpc://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait()


# --- one combination -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Combination:
    storage: str  # sqlite, postgresql or grpc (PostgreSQL behind the proxy)
    kind: str  # search or repeat
    workers: int
    trials: int
    cold: bool = False  # the workers make the storage's tables (see measure)

    @property
    def key(self) -> str:
        return f"{self.storage}:{self.kind}:{self.workers}:{self.trials}" + (":cold" if self.cold else "")


def study_file(directory: Path, name: str, kind: str, trials: int) -> Path:
    """A study file of ``trials`` trials on the seed config: a search over model.lr, or a repeat of as many seeds."""
    what = ({"search": {"trials": trials, "pruner": "none", "space": {"model.lr": {"low": 0.01, "high": 0.5,
                                                                                  "log": True}}}}
            if kind == "search" else {"repeat": {"seeds": list(range(trials))}})
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": "seed", **what, "overrides": {
        "data.data_dir": str(FIXTURE), "data.verify": False, "data.download": False}}))
    return path


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start_worker(spec: Path, directory: Path, storage: str, log: Path, heartbeat: int = 10,
                 profile: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """One worker of the study, as another host would run it, with its stdout and stderr in ``log``."""
    cmd = [sys.executable, "-m", "benchmarks.study_scale", "--worker-entry", str(spec), "--dir", str(directory),
           "--storage", storage, "--heartbeat", str(heartbeat), "--worker"]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env or _env(), stdout=out, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_all(procs: list[subprocess.Popen], timeout: float) -> bool:
    """Whether every process ended within ``timeout`` seconds. Those still running are then stopped as Ctrl-C
    stops a study (so that each still reports what it measured), and killed if that takes over 30 s."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
    else:
        return True
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        for proc in procs:
            proc.wait(timeout=30)
    stop(procs)
    return False


def read_trials(url: str, name: str) -> list:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def measure(c: Combination, storage_url: str, server_pid: int | None, tmp: Path, timeout: float,
            profile: Path | None) -> dict[str, Any]:
    """Run one combination's study to its end and read what it cost from the storage and the workers (and the CPU
    time of the PostgreSQL server, ``server_pid``, where it is ours, and of the gRPC proxy). The storage's tables
    are made first, as ``--workers N`` does (its own process opens the storage before it starts the workers);
    With ``c.cold``, by the workers, all at once, as processes started together on several hosts do."""
    from optuna.trial import TrialState

    name = f"scale_{c.storage}_{c.kind}_{c.workers}w_{c.trials}_{os.getpid()}"
    work = tmp / name
    work.mkdir()
    spec = study_file(work, name, c.kind, c.trials)
    record: dict[str, Any] = {"load_average_start": [round(x, 2) for x in os.getloadavg()],
                              "started": datetime.now().astimezone().isoformat(timespec="seconds")}
    rdb = storage_url if c.storage != "sqlite" else f"sqlite:///{work / 'study.db'}"
    if not c.cold:
        from fashion_cnn.storage import open_storage

        open_storage(rdb).engine.dispose()
    server_cpu = cpu_seconds(server_pid, children=True) if c.storage != "sqlite" else None
    with contextlib.ExitStack() as stack:
        url, proxy = stack.enter_context(grpc_proxy(rdb, work / "proxy.log")) if c.storage == "grpc" else (rdb, None)
        logs = [work / f"worker{i}.log" for i in range(c.workers)]
        profiles = [profile / f"{name}-w{i}.prof" for i in range(c.workers)] if profile else [None] * c.workers
        start = time.perf_counter()
        procs = [start_worker(spec, work / "study", url, log, profile=p) for log, p in zip(logs, profiles, strict=True)]
        finished_in_time = wait_all(procs, timeout)
        record["command_wall_s"] = round(time.perf_counter() - start, 2)
        started_at = time.time() - record["command_wall_s"]
        proxy_cpu = cpu_seconds(proxy.pid) if proxy else None
    if server_cpu is not None:
        time.sleep(1)  # the backends of the closed connections end, and the server counts their time
        server_cpu = cpu_seconds(server_pid, children=True) - server_cpu
    record["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    record["exit_statuses"] = [p.returncode for p in procs]
    outputs = [log.read_text(errors="replace") for log in logs]
    record["database_is_locked"] = sum(o.count(LOCKED) for o in outputs)
    reports = [json.loads(line.removeprefix(REPORT)) for o in outputs for line in o.splitlines()
               if line.startswith(REPORT)]
    if not finished_in_time:  # the figures of the trials that did finish, marked
        record["timed_out"] = True
    elif any(record["exit_statuses"]) or len(reports) < c.workers:
        record["error"] = "a worker failed"
    try:
        trials = read_trials(rdb, name)
    except KeyError:  # no study: no worker got that far
        trials = []
    spare = [t for t in trials if t.user_attrs.get("spare")]
    counted = [t for t in trials if not t.user_attrs.get("spare")]
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    if "error" in record or not complete:
        record.setdefault("error", "no trial completed")
        record["output_tail"] = [o[-2000:] for o in outputs]
        return record
    ends = sorted(t.datetime_complete.timestamp() for t in complete)
    first = min(t.datetime_start.timestamp() for t in trials if t.datetime_start)
    span = ends[-1] - first
    tenth = max(1, len(ends) // 10)
    record.update({
        "trials_complete": len(complete), "finished_exactly": len(complete) == c.trials == len(counted),
        "spare_trials": len(spare), "failed_trials": sum(t.state == TrialState.FAIL for t in trials),
        "span_s": round(span, 3), "s_per_trial": round(span / len(complete), 5),
        "first_tenth_s_per_trial": round((ends[tenth - 1] - first) / tenth, 5),
        "last_tenth_s_per_trial": round((ends[-1] - ends[-1 - tenth]) / tenth, 5) if len(ends) > tenth else None,
        "trial_duration_median_s": round(statistics.median(
            (t.datetime_complete - t.datetime_start).total_seconds() for t in complete), 5),
        "worker_cpu_s_per_trial": round(sum(r["loop_cpu_s"] for r in reports) / len(complete), 5)
        if len(reports) == c.workers else None,
        "server_cpu_s_per_trial": None if server_cpu is None else round(server_cpu / len(complete), 5),
        "sql_statements_per_trial": round(sum(r["statements"] for r in reports) / len(complete), 1),
        "transactions_per_trial": round(sum(r["commits"] for r in reports) / len(complete), 1),
        "proxy_cpu_s_per_trial": None if proxy_cpu is None else round(proxy_cpu / len(complete), 5),
        "trials_per_worker": [r["trials"] for r in reports],
        "startup_s": [round(r["loop_start"] - started_at, 2) for r in reports if "loop_start" in r],
        "open_study_s": [round(r.get("open_study_s", 0.0), 2) for r in reports],
        "check_fit_args_s": [round(r["check_fit_args_s"], 2) for r in reports],
        "check_fit_args_calls": [r["check_fit_args_calls"] for r in reports],
    })
    if profile:
        record["profile"] = profile_summary([p for p in profiles if p.exists()], c.trials)
    return record


PROFILED = [  # (file's ending, function): the driver's parts a profile is summed over
    ("fashion_cnn/study.py", "work"), ("optuna/study/study.py", "optimize"), ("fashion_cnn/study.py", "progress"),
    ("optuna/storages/_heartbeat.py", "fail_stale_trials"), ("fashion_cnn/study.py", "_is_spare"),
    ("fashion_cnn/study.py", "_frozen"), ("fashion_cnn/study.py", "_last_checkpoint_of_retried"),
    ("optuna/study/study.py", "ask"), ("optuna/study/_tell.py", "_tell_with_warning"),
    ("optuna/samplers/_tpe/sampler.py", "sample_independent"), ("optuna/trial/_trial.py", "set_user_attr"),
    ("optuna/storages/_cached_storage.py", "get_all_trials"),
    ("optuna/storages/_cached_storage.py", "_read_trials_from_remote_storage"),
    ("sqlalchemy/engine/base.py", "commit"), ("fashion_cnn/study.py", "waiting_line"),
]


def profile_summary(files: list[Path], trials: int) -> dict[str, float]:
    """Cumulative seconds per trial, over all workers' profiles, of each of the driver's parts in PROFILED."""
    if not files:
        return {}
    stats = pstats.Stats(*map(str, files)).stats
    out: dict[str, float] = {}
    for (path, _, function), (_, _, _, cumulative, _) in stats.items():
        for ending, name in PROFILED:
            if function == name and path.endswith(ending):
                key = f"{ending.rsplit('/', 1)[-1]}:{name}"
                out[key] = round(out.get(key, 0.0) + cumulative / trials, 5)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# --- a dead worker behind the proxy --------------------------------------------------------------------------------


def wait_for_retry(worker: subprocess.Popen, log: Path) -> bool:
    """Whether the worker ended within WAIT_FOR_RETRY_S seconds of saying it waits for another's trial (within
    240 s of its start in all); it is stopped otherwise."""
    deadline = time.monotonic() + 240
    while worker.poll() is None and time.monotonic() < deadline:
        if "waiting for trial" in log.read_text(errors="replace"):
            deadline = min(deadline, time.monotonic() + WAIT_FOR_RETRY_S)
        time.sleep(0.5)
    return wait_all([worker], 0)


def check_proxy_heartbeats(server: Server, tmp: Path) -> dict[str, Any]:
    """Kill a worker (SIGKILL) in trial 0 of a 3-trial search with 1 s heartbeats, then run a second worker: whether
    it retries trial 0 (finishing the study), on PostgreSQL directly, behind the proxy, and with the second worker on
    PostgreSQL directly while the dead one used the proxy."""
    out: dict[str, Any] = {}
    for first, second in (("postgresql", "postgresql"), ("grpc", "grpc"), ("grpc", "postgresql")):
        name = f"heartbeat_{first}_{second}_{os.getpid()}"
        work = tmp / name
        work.mkdir()
        spec = study_file(work, name, "search", 3)
        rdb = new_database(server, name)
        with contextlib.ExitStack() as stack:
            proxy = stack.enter_context(grpc_proxy(rdb, work / "proxy.log")) if "grpc" in (first, second) else None
            urls = {"postgresql": rdb, "grpc": proxy and proxy[0]}
            dying = start_worker(spec, work / "study", urls[first], work / "dying.log", heartbeat=1,
                                 env={**_env(), DIE_ENV: "0"})
            dying.wait()
            survivor = start_worker(spec, work / "study", urls[second], work / "survivor.log", heartbeat=1)
            ended = wait_for_retry(survivor, work / "survivor.log")
        log = (work / "survivor.log").read_text(errors="replace")
        trials = read_trials(rdb, name)
        from optuna.storages import RetryHeartbeatStaleTrialCallback
        from optuna.trial import TrialState

        retried = any(0 in RetryHeartbeatStaleTrialCallback.retry_history(t) for t in trials)
        out[f"dead worker on {first}, next worker on {second}"] = {
            "dying_worker_status": dying.returncode, "next_worker_ended_in_time": ended,
            "trial_0_state": trials[0].state.name, "trial_0_retried": retried,
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "waiting_line": next((line for line in log.splitlines() if "waiting for trial" in line), None)}
        verdict = "retried" if retried else "NOT retried"
        print(f"dead worker on {first}, next worker on {second}: trial 0 {verdict}, "
              f"{out[f'dead worker on {first}, next worker on {second}']['complete']} of 3 complete"
              f"{'' if ended else f', the next worker still waiting after {WAIT_FOR_RETRY_S} s'}", flush=True)
    return out


# --- the command ---------------------------------------------------------------------------------------------------


def cpu_flags() -> dict[str, bool | None]:
    """AVX2, AVX512-BF16 and AMX, from /proc/cpuinfo (None where there is none)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return {"avx2": None, "avx512_bf16": None, "amx": None}
    return {"avx2": "avx2" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags}


def versions() -> dict[str, str | None]:
    def of(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    return {p: of(p) for p in ("optuna", "optuna-integration", "sqlalchemy", "psycopg", "grpcio")}


def combinations(args: argparse.Namespace) -> list[Combination]:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    combos = [Combination(s, "search", w, n) for s in args.storages.split(",") if s for w in ints(args.workers)
              for n in ints(args.trials)]
    combos += [Combination("grpc", "search", w, n) for w in ints(args.grpc_workers) for n in ints(args.grpc_trials)]
    combos += [Combination(s, "repeat", w, n) for s in args.storages.split(",") if s for w in ints(args.workers)
               for n in ints(args.repeat_trials)]
    skipped = set(args.skip)
    return [Combination(c.storage, c.kind, c.workers, c.trials, args.cold) for c in combos if c.key not in skipped]


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict[str, dict]) -> dict[str, dict]:
    """The figures of each combination, and each series' growth from its fewest trials to its most: of s/trial, and
    of the workers' CPU s/trial (which another job on the machine disturbs less)."""
    print(f"\n{'storage':<16}{'kind':<7}{'workers':>7}{'trials':>7}{'s/trial':>9}{'first10%':>9}{'last10%':>9}"
          f"{'CPU/trial':>10}{'SQL/trial':>10}{'start-up':>9}{'check':>7}{'spares':>7}{'locked':>7}  finished")
    series: dict[tuple[str, str, int], dict[int, dict]] = {}
    for key, r in results.items():
        storage, kind, workers, trials, *cold = key.split(":")
        storage += "+cold" if cold else ""
        if "error" in r:
            print(f"{storage:<16}{kind:<7}{workers:>7}{trials:>7}  {r['error']}")
            continue
        if r["finished_exactly"]:
            series.setdefault((storage, kind, int(workers)), {})[int(trials)] = r
        done = "exactly" if r["finished_exactly"] else f"{r['trials_complete']} (timed out)" if r.get(
            "timed_out") else f"{r['trials_complete']}, not exactly"
        print(f"{storage:<16}{kind:<7}{workers:>7}{trials:>7}{fmt(r['s_per_trial']):>9}"
              f"{fmt(r['first_tenth_s_per_trial']):>9}{fmt(r['last_tenth_s_per_trial']):>9}"
              f"{fmt(r['worker_cpu_s_per_trial']):>10}{fmt(r.get('sql_statements_per_trial'), '.1f'):>10}"
              f"{fmt(max(r['startup_s'], default=None), '.1f'):>9}"
              f"{fmt(max(r['check_fit_args_s'], default=None), '.2f'):>7}{r['spare_trials']:>7}"
              f"{r['database_is_locked']:>7}  {done}")
    growth = {}
    for (storage, kind, workers), by_n in sorted(series.items()):
        if len(by_n) > 1:
            low, high = by_n[min(by_n)], by_n[max(by_n)]
            cpu = (high["worker_cpu_s_per_trial"] / low["worker_cpu_s_per_trial"]
                   if high["worker_cpu_s_per_trial"] and low["worker_cpu_s_per_trial"] else None)
            ratio = high["s_per_trial"] / low["s_per_trial"]
            growth[f"{storage}:{kind}:{workers}"] = {"trials": [min(by_n), max(by_n)], "s_per_trial": round(ratio, 2),
                                                     "worker_cpu_s_per_trial": cpu and round(cpu, 2)}
            print(f"growth {storage} {kind} {workers} worker(s), {max(by_n)}/{min(by_n)} trials: {ratio:.2f}x "
                  f"s/trial, {fmt(cpu, '.2f')}x worker CPU/trial")
    return growth


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.study_scale``: the study driver's seconds per trial by trial count, storage and
    workers; its exit status (1 when a combination failed or did not finish exactly its trials)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--trials", default="20,200,2000", help="search sizes, comma-separated")
    p.add_argument("--storages", default="sqlite,postgresql", help="sqlite and/or postgresql, comma-separated")
    p.add_argument("--workers", default="1,4", help="worker processes, comma-separated")
    p.add_argument("--grpc-trials", default="200,2000", help="search sizes behind the gRPC proxy ('' for none)")
    p.add_argument("--grpc-workers", default="4", help="workers behind the gRPC proxy")
    p.add_argument("--repeat-trials", default="", help="repeat sizes (seeds), comma-separated ('' for none)")
    p.add_argument("--skip", action="append", default=[], metavar="STORAGE:KIND:WORKERS:TRIALS",
                   help="leave this combination out (repeatable), e.g. sqlite:search:1:2000")
    p.add_argument("--storage", help="a PostgreSQL database URL to use instead of a throwaway server (each "
                   "combination adds its own study; the password is best left to libpq: PGPASSWORD, ~/.pgpass)")
    p.add_argument("--timeout", type=float, default=540, help="seconds a combination may take")
    p.add_argument("--cold", action="store_true", help="let the workers, started together, make the storage's "
                   "tables (as on several hosts), instead of making them first (as --workers N does)")
    p.add_argument("--check-proxy-heartbeats", action="store_true",
                   help="also check whether a dead worker's trial is retried behind the gRPC proxy")
    p.add_argument("--profile", type=Path, help="cProfile each worker into this directory, and sum the driver's parts")
    p.add_argument("--json", type=Path, help="also write the figures and the circumstances here")
    p.add_argument("--merge", action="store_true", help="add to the --json file's combinations, keeping the others")
    p.add_argument("--worker-entry", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--proxy-entry", nargs=2, metavar=("URL", "PORT"), help=argparse.SUPPRESS)
    if argv is None:
        argv = sys.argv[1:]
    if "--worker-entry" in argv:  # the rest is the study command's, but for --profile
        rest = [a for a in argv if a != "--worker-entry"]
        profile = None
        if "--profile" in rest:
            i = rest.index("--profile")
            profile, rest = Path(rest[i + 1]), rest[:i] + rest[i + 2:]
        return worker_entry(rest, profile)
    args = p.parse_args(argv)
    if args.proxy_entry:
        proxy_entry(args.proxy_entry[0], int(args.proxy_entry[1]))
        return 0
    combos = combinations(args)
    if not combos and not args.check_proxy_heartbeats:
        p.error("no combination left to run")
    unknown = {c.storage for c in combos} - {"sqlite", "postgresql", "grpc"}
    if unknown:
        p.error(f"unknown storage {sorted(unknown)[0]} (sqlite, postgresql)")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    record = {**circumstances(), **cpu_flags(), "versions": versions()}
    results: dict[str, dict] = {}
    needs_server = args.check_proxy_heartbeats or any(c.storage != "sqlite" for c in combos)
    with tempfile.TemporaryDirectory(prefix="study-scale-") as tmp, contextlib.ExitStack() as stack:
        server = None
        if needs_server and not args.storage:
            server = stack.enter_context(postgres_server())
        if needs_server:
            record["versions"]["postgresql_server"] = server_version(args.storage or f"{server.url}/postgres")
        for c in combos:
            url = args.storage or (new_database(server, c.key.replace(":", "_")) if c.storage != "sqlite" else "")
            print(f"{c.key} ...", end=" ", flush=True)
            results[c.key] = r = measure(c, url, server and server.pid, Path(tmp), args.timeout, args.profile)
            print(r.get("error") or f"{r['s_per_trial']:.4f} s/trial, {r['command_wall_s']:.0f} s in all, load "
                  f"{r['load_average_start'][0]:.1f} -> {r['load_average_end'][0]:.1f}", flush=True)
        if args.check_proxy_heartbeats:
            if args.storage:
                print("--check-proxy-heartbeats needs the throwaway server (it creates databases): skipped")
            else:
                record["proxy_heartbeats"] = check_proxy_heartbeats(server, Path(tmp))
    record["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    run = {**{k: v for k, v in record.items() if k != "proxy_heartbeats"}, "combinations": list(results)}
    checked = {"proxy_heartbeats": record["proxy_heartbeats"]} if "proxy_heartbeats" in record else {}
    everything, runs = results, [run]
    if args.json and args.merge and args.json.exists():  # this run's combinations replace the file's same ones
        old = json.loads(args.json.read_text())
        everything, runs = {**old.get("results", {}), **results}, [*old.get("runs", []), run]
        checked = checked or {k: old[k] for k in ("proxy_heartbeats",) if k in old}
    growth = print_table(everything)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "results": everything, "growth": growth, **checked},
                                        indent=1) + "\n")
    failed = [k for k, r in results.items() if "error" in r or not r["finished_exactly"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
