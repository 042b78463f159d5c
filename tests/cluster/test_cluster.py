"""The project on a cluster of one machine (``make test-cluster``): real PostgreSQL, SLURM and torchrun, started by
``conftest.py``. First the harness itself (a connection, ``srun``, ``sbatch --wait``, a two-launcher DDP fit), then
the recipes of ``examples/`` as users run them, on the small fixture, then the scenarios of issue 29 that failed
before their fixes."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from lightning.pytorch import Callback

from fashion_cnn import checkpoints
from fashion_cnn.evaluate import predictions_on
from tests.cluster.conftest import JOB_DONE, REPO, Postgres, Slurm, client_env
from tests.helpers import FIXTURE, scalars

pytestmark = pytest.mark.cluster

EXAMPLES = REPO / "examples"
# fit's options for a quick run on the fixture, less the data directory (the recipes take it as DATA_DIR)
QUIET = ["--data.verify", "false", "--data.download", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "4"]
# a study's overrides for the same (its workers find the fixture through DATA_DIR, as FASHION_MNIST_DIR)
STUDY_OVERRIDES = {"data.verify": False, "data.download": False, "trainer.enable_progress_bar": False,
                   "trainer.enable_model_summary": False, "trainer.log_every_n_steps": 4, "trainer.max_epochs": 1}


class SlowEpochs(Callback):
    """Each training epoch of a job's first start lasts ``seconds`` longer: the requeue test's run is then still
    training when SLURM's signal comes, however fast this machine is (SLURM acts on time limits every 30 s); the
    requeued start runs at full speed."""

    def __init__(self, seconds: float = 1.5) -> None:
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
            time.sleep(self.seconds)


class StallFirstEpoch(Callback):
    """The first training step of a job's first start waits (up to ``seconds``) until SIGTERM has come: the signal
    then comes before the first epoch ends, and so before any checkpoint."""

    def __init__(self, seconds: float = 240) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if os.environ.get("SLURM_RESTART_COUNT", "0") == "0" and trainer.current_epoch == 0 and batch_idx == 0:
            print("stalling the first epoch until SIGTERM", flush=True)
            deadline = time.monotonic() + self.seconds
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.2)


def psycopg_or_skip():
    return pytest.importorskip("psycopg", reason="PostgreSQL's driver is the optional extra: pip install -e "
                                                 "'.[postgres]' (make test-cluster installs it)")


def repeat_study(path: Path, seeds: list[int]) -> Path:
    """A repeat of the seed config over ``seeds``, one epoch on the fixture."""
    path.write_text(yaml.safe_dump({"base": "seed", "overrides": STUDY_OVERRIDES, "repeat": {"seeds": seeds}}))
    return path


def finished_seeds(name: str, url: str) -> list[int]:
    """The seeds of a study's completed trials (a spare trial, started when nothing was left, is pruned)."""
    study = optuna.load_study(study_name=name, storage=url)
    return sorted(t.params["seed"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)


def outputs(directory: Path, pattern: str = "slurm-*.out") -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(directory.glob(pattern)))


@pytest.fixture
def pg_env(postgres: Postgres, monkeypatch) -> Postgres:
    """The server, with this process's libpq (Optuna's reads of the studies) finding its password file."""
    psycopg_or_skip()
    monkeypatch.delenv("PGPASSWORD", raising=False)
    for key, value in postgres.env.items():
        monkeypatch.setenv(key, value)
    return postgres


# --- the harness ---------------------------------------------------------------------------------------------------

def test_postgres_takes_the_password_from_the_password_file_only(postgres):
    psycopg = psycopg_or_skip()
    where = {"host": "127.0.0.1", "port": postgres.port, "user": postgres.user, "dbname": postgres.database}
    with psycopg.connect(**where, passfile=str(postgres.passfile)) as conn:
        assert conn.execute("SELECT current_user, split_part(version(), ' ', 2)").fetchone()[0] == postgres.user
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
    with pytest.raises(psycopg.OperationalError, match="password"):  # it does ask for one
        psycopg.connect(**where, passfile=str(postgres.passfile.with_name("none")))


def test_srun_runs_tasks_on_the_node(slurm: Slurm):
    assert slurm.run("srun", "hostname").stdout.split() == [slurm.node]
    tasks = slurm.run("srun", "--ntasks=2", "--label", "printenv", "SLURM_PROCID").stdout.split("\n")
    assert sorted(line for line in tasks if line) == ["0: 0", "1: 1"]


def test_sbatch_wait_runs_a_batch_job(slurm: Slurm, tmp_path):
    done = slurm.run("sbatch", "--wait", "--parsable", f"--output={tmp_path}/job-%j.out", "--wrap",
                     "echo job $SLURM_JOB_ID on $SLURMD_NODENAME", cwd=tmp_path)
    job = int(done.stdout.split(";")[0])
    assert (tmp_path / f"job-{job}.out").read_text() == f"job {job} on {slurm.node}\n"
    record = slurm.job(job)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0")


def test_two_torchrun_launchers_run_one_ddp_fit(torchrun_nodes, tmp_path):
    """Two launchers as two nodes of one CPU DDP run, one process each. The final test (each rank tests half the
    test set, the accuracy synced) is (each rank tests half the test set, the accuracy synced) is
    the accuracy one process finds for the final weights on the whole test set, through the same views; and only
    rank 0 wrote: one run, whose TensorBoard events are all one process's, and the per-epoch lines."""
    launched = torchrun_nodes("--trainer.accelerator", "cpu", "--trainer.max_epochs", "2", *QUIET, cwd=tmp_path,
                              env={"DATA_DIR": str(FIXTURE)})
    for node in launched:
        assert node.returncode == 0, f"node {node.node_rank}:\n{node.output[-3000:]}"
    assert [r.name for r in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert len(scalars(run)["test/acc"]) == 2
    assert "[2] Test loss" in launched[0].output and "[2] Test loss" not in launched[1].output
    events = list(run.rglob("events.out.tfevents.*"))
    assert events and len({e.name.rsplit(".", 2)[1] for e in events}) == 1, events  # ...T.HOST.PID.N
    [logged] = scalars(run)["final/test_acc"]
    preds, images, _ = predictions_on(checkpoints.load(run / "checkpoints" / "last.ckpt"), "test", str(FIXTURE))
    assert len(images) == 256  # the fixture's whole test set, in one process
    assert logged == pytest.approx(preds.accuracy, abs=1e-6)


# --- the recipes (examples/) ---------------------------------------------------------------------------------------

def test_study_array_runs_one_worker_per_array_task(slurm: Slurm, pg_env: Postgres, tmp_path):
    url = pg_env.new_database("study_array")
    study = repeat_study(tmp_path / "array.yaml", [0, 1])
    env = {**pg_env.env, "STUDY": str(study), "STUDY_DIR": str(tmp_path / "study"), "STORAGE": url,
           "DATA_DIR": str(FIXTURE)}
    job = slurm.sbatch("--array=0-1", f"--output={tmp_path}/slurm-%A_%a.out", EXAMPLES / "slurm" / "study_array.sbatch",
                       env=env, cwd=tmp_path)
    tasks = slurm.wait(job, timeout=400)
    assert [(t["JobState"], t["ExitCode"]) for t in tasks] == [("COMPLETED", "0:0")] * 2, outputs(tmp_path)[-4000:]
    assert finished_seeds("array", url) == [0, 1]
    assert sorted(p.name for p in (tmp_path / "study" / "lightning_logs").iterdir()) == ["version_0", "version_1"]


def test_ddp_sbatch_runs_one_fit_across_the_tasks(slurm: Slurm, tmp_path):
    env = {"LOGS": str(tmp_path / "runs"), "DATA_DIR": str(FIXTURE)}
    job = slurm.sbatch(f"--output={tmp_path}/slurm-%j.out", EXAMPLES / "slurm" / "ddp.sbatch", "--trainer.accelerator",
                       "cpu", "--trainer.max_epochs", "2", *QUIET, env=env, cwd=tmp_path)
    [record] = slurm.wait(job, timeout=400)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), outputs(tmp_path)[-4000:]
    runs = tmp_path / "runs" / "lightning_logs"
    assert [r.name for r in runs.iterdir()] == ["version_0"]  # rank 0 wrote the one run
    assert len(scalars(runs / "version_0")["test/acc"]) == 2


def test_train_requeue_continues_after_sigterm_at_the_time_limit(slurm: Slurm, tmp_path):
    """The self-requeueing job of docs/scaling.md: SIGTERM before the time limit (``--signal``), fit exits 143,
    ``scontrol requeue``, and the next start continues from last.ckpt to the end."""
    epochs = 30
    env = {"CONFIG": "seed", "LOGS": str(tmp_path / "runs"), "DATA_DIR": str(FIXTURE)}
    out = tmp_path / "train.out"
    job = slurm.sbatch("--time=10", f"--output={out}", EXAMPLES / "slurm" / "train_requeue.sbatch",
                       "--trainer.max_epochs", str(epochs), *QUIET,
                       "--trainer.callbacks+=tests.cluster.test_cluster.SlowEpochs", env=env, cwd=tmp_path)
    try:
        wait_for_line(out, "[1] Test loss", slurm, job)  # an epoch is done: its last.ckpt is there
        # The time limit made short enough that SIGTERM@120 is due now: SLURM sends it at its next check (<= 30 s).
        elapsed = slurm.job(job)["RunTime"]
        minutes = math.ceil(seconds(elapsed) / 60) + 1
        slurm.run("scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}")
        wait_for_line(out, "stopped by SIGTERM", slurm, job, timeout=120)
        slurm.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")  # the next start runs to the end
        deadline = time.monotonic() + 120
        while (state := slurm.job(job))["Restarts"] == "0" or state["JobState"] != "PENDING":  # the script's requeue
            assert state["JobState"] not in JOB_DONE and time.monotonic() < deadline, \
                f"not requeued ({state['JobState']}):\n{out.read_text()[-3000:]}"
            time.sleep(0.5)
        slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")  # SLURM holds a requeued job for 2 minutes
        [record] = slurm.wait(job, timeout=300)
    finally:
        slurm.run("scancel", str(job), check=False)
    log = out.read_text()
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), log[-3000:]
    assert log.count("stopped by SIGTERM") == 1
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert [r.name for r in run.parent.iterdir()] == ["version_0"]  # the second start continued the same run
    assert len(scalars(run)["test/acc"]) == epochs  # every epoch once (the redone one's first copy purged)


NOT_REQUEUED = ("train_requeue.sbatch: no new checkpoint since this start (the time-limit signal came before the "
                "next epoch ended): not requeued; give the job a longer --time or an earlier --signal=TERM@N")


def test_train_requeue_stops_when_a_start_saved_no_checkpoint(slurm: Slurm, tmp_path):
    """Issue 29: a job whose time-limit signal comes before its next checkpoint would requeue itself forever (each
    start from the same place, each stopped by the same signal); the script requeues only a start that saved a new
    last.ckpt, and otherwise says why and exits 143."""
    env = {"CONFIG": "seed", "LOGS": str(tmp_path / "runs"), "DATA_DIR": str(FIXTURE)}
    out = tmp_path / "train.out"
    job = slurm.sbatch("--time=10", f"--output={out}", EXAMPLES / "slurm" / "train_requeue.sbatch",
                       "--trainer.max_epochs", "2", *QUIET,
                       "--trainer.callbacks+=tests.cluster.test_cluster.StallFirstEpoch", env=env, cwd=tmp_path)
    try:
        wait_for_line(out, "stalling the first epoch", slurm, job)  # training, and no checkpoint yet
        elapsed = slurm.job(job)["RunTime"]  # SIGTERM@120 due now: SLURM sends it at its next check (<= 30 s)
        slurm.run("scontrol", "update", f"JobId={job}", f"TimeLimit={math.ceil(seconds(elapsed) / 60) + 1}")
        [record] = slurm.wait(job, timeout=180)
    finally:
        slurm.run("scancel", str(job), check=False)
    log = out.read_text()
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("FAILED", "143:0", "0"), log[-3000:]
    assert log.count("stalling the first epoch") == 1 and log.count("stopped by SIGTERM") == 1, log[-3000:]
    assert NOT_REQUEUED in log, log[-3000:]
    assert not list((tmp_path / "runs").glob("lightning_logs/version_*/checkpoints/last.ckpt"))


def seconds(runtime: str) -> int:
    """SLURM's [D-]HH:MM:SS as seconds."""
    days, _, clock = runtime.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + h) * 3600 + m * 60 + s


def wait_for_line(path: Path, text: str, slurm: Slurm, job: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        state = slurm.job(job)["JobState"]
        log = path.read_text(errors="replace")[-3000:] if path.exists() else ""
        assert state in ("PENDING", "RUNNING", "REQUEUED"), f"job {job} {state} before {text!r}:\n{log}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{log}"
        time.sleep(0.5)


# --- issue 29's scenarios -----------------------------------------------------------------------------

def test_study_srun_runs_one_worker_per_task(slurm: Slurm, pg_env: Postgres, tmp_path):
    url = pg_env.new_database("study_srun")
    study = repeat_study(tmp_path / "srun.yaml", [0, 1])
    env = {**pg_env.env, "STUDY": str(study), "STUDY_DIR": str(tmp_path / "study"), "STORAGE": url,
           "DATA_DIR": str(FIXTURE)}
    job = slurm.sbatch(f"--output={tmp_path}/slurm-%j.out", EXAMPLES / "slurm" / "study_srun.sbatch", env=env,
                       cwd=tmp_path)
    [record] = slurm.wait(job, timeout=400)
    log = outputs(tmp_path)
    assert "is not supported" not in log, log[-4000:]
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert finished_seeds("srun", url) == [0, 1], log[-4000:]
    runs = tmp_path / "study" / "lightning_logs"  # each task's trial a run of its own, task 1's written too
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    for run in runs.iterdir():
        assert len(scalars(run)["test/acc"]) == 1, run


# `python -m fashion_cnn.study ARGS`, held back just before it opens the storage until COUNT processes have got
# there, then let go at the same instant: the reported failure needs workers to reach an empty database within a
# fraction of a second, and checking a study file takes each a second or so, by more or less on a busy machine.
# (PostgreSQL's driver is imported before, as it would be by a worker that had started a moment earlier.)
AT_ONCE = """
import os, sys, time
from pathlib import Path
import sqlalchemy.dialects.postgresql.psycopg
import fashion_cnn.study as study
barrier, count, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
open_storage = study.open_storage
def together(*args, **kwargs):
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 300
    while len(arrived := list(barrier.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(max(0.0, max(p.stat().st_mtime for p in arrived) + 0.5 - time.time()))
    return open_storage(*args, **kwargs)
study.open_storage = together
sys.exit(study.main(argv))
"""


def test_three_study_workers_started_at_once_on_an_empty_database(pg_env: Postgres, tmp_path):
    """Issue 29's second scenario: workers that create Optuna's tables together collided ("UniqueViolation ...
    pg_type_typname_nsp_index") and one died; fashion_cnn.storage now retries the creation. Without those retries
    this test fails (two of three workers, most runs)."""
    url = pg_env.new_database("at_once")
    study = repeat_study(tmp_path / "at_once.yaml", [0, 1, 2])
    env = client_env(**pg_env.env, FASHION_MNIST_DIR=str(FIXTURE), OMP_NUM_THREADS="1")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    cmd = [sys.executable, "-c", AT_ONCE, str(barrier), "3", str(study), "--workers", "1", "--dir",
           str(tmp_path / "study"), "--storage", url]
    logs = [(tmp_path / f"worker{i}.out").open("w+") for i in range(3)]  # files: a full pipe would stall a worker
    workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
               for log in logs]
    results = []
    for worker, log in zip(workers, logs, strict=True):
        try:
            worker.wait(timeout=400)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        with log:
            log.seek(0)
            results.append((worker.returncode, log.read()))
    log = "\n".join(f"--- worker {i} (exit {code})\n{out[-2500:]}" for i, (code, out) in enumerate(results))
    assert "UniqueViolation" not in log, log
    assert [code for code, _ in results] == [0, 0, 0], log
    assert finished_seeds("at_once", url) == [0, 1, 2], log


def _open_under(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` holds a file under ``directory`` open (a trial's TensorBoard events file)."""
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:  # ended, or a descriptor closed meanwhile
        return False
    return any(link.startswith(f"{directory}/") for link in links)


def final_accuracies(name: str, url: str) -> dict[int, float]:
    """Each completed seed's final/test_acc (what the final table shows), from the trials' user attrs."""
    study = optuna.load_study(study_name=name, storage=url)
    return {t.params["seed"]: t.user_attrs["final/test_acc"] for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE}


def test_postgres_study_retries_the_trial_of_a_killed_worker(pg_env: Postgres, tmp_path):
    """Issue 29: three workers started as separate commands on one PostgreSQL study, one SIGKILLed once its trial
    saved a last.ckpt; one more worker (the command run again) retries that trial after 3 heartbeats, from its
    last.ckpt, and each seed completes once, with the final test accuracies of the same study run on SQLite."""
    url = pg_env.new_database("killed")
    study = tmp_path / "killed.yaml"
    study.write_text(yaml.safe_dump({"base": "seed", "overrides": {**STUDY_OVERRIDES, "trainer.max_epochs": 12},
                                     "repeat": {"seeds": [0, 1, 2]}}))
    env = client_env(**pg_env.env, FASHION_CNN_STORAGE=url, FASHION_MNIST_DIR=str(FIXTURE), OMP_NUM_THREADS="1")
    pg_dir = tmp_path / "pg"
    cmd = [sys.executable, "-m", "fashion_cnn.study", str(study), "--workers", "1", "--dir", str(pg_dir),
           "--heartbeat", "1"]
    logs: list[Path] = []
    workers: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        logs.append(tmp_path / f"worker{len(logs)}.out")
        with logs[-1].open("w") as out:  # a file: a full pipe would stall a worker
            workers.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True))
        return workers[-1]

    def said(chars: int = 2500) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in logs)

    try:
        for _ in range(3):
            start()
        deadline = time.monotonic() + 300
        killed = run = None
        while killed is None:
            for last in pg_dir.glob("lightning_logs/version_*/checkpoints/last.ckpt"):
                run = last.parent.parent
                killed = next((w for w in workers if w.poll() is None and _open_under(w.pid, run)), None)
                if killed is not None:
                    break
            alive = any(w.poll() is None for w in workers)
            assert alive and time.monotonic() < deadline, f"no worker killed with a last.ckpt:\n{said()}"
            time.sleep(0.1)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        start()  # the command run again
        for worker in workers:
            worker.wait(timeout=400)
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    codes = [w.returncode for w in workers]
    assert codes.count(-signal.SIGKILL) == 1 and codes.count(0) == 3, f"{codes}\n{said()}"
    assert f"continues from {run}/checkpoints/last.ckpt" in said(10**7), said()
    assert finished_seeds("killed", url) == [0, 1, 2], said()
    on_postgres = final_accuracies("killed", url)

    sqlite_dir = tmp_path / "sqlite"
    sqlite_env = {k: v for k, v in env.items() if k != "FASHION_CNN_STORAGE"}
    done = subprocess.run([*cmd[:7], str(sqlite_dir)], cwd=tmp_path, env=sqlite_env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    on_sqlite = final_accuracies("killed", f"sqlite:///{sqlite_dir / 'study.db'}")
    assert sorted(on_sqlite) == [0, 1, 2]
    assert on_postgres == on_sqlite, said()
