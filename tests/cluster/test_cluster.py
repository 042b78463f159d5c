"""The project on a cluster of one machine (``make test-cluster``): real PostgreSQL, SLURM and torchrun, started by
``conftest.py``. The harness itself: a connection, ``srun``, ``sbatch --wait``, a two-launcher DDP fit."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import Slurm
from tests.helpers import FIXTURE, scalars

pytestmark = pytest.mark.cluster

# fit's options for a quick run on the fixture, less the data directory (the recipes take it as DATA_DIR)
QUIET = ["--data.verify", "false", "--data.download", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "4"]


def psycopg_or_skip():
    return pytest.importorskip("psycopg", reason="PostgreSQL's driver is the optional extra: pip install -e "
                                                 "'.[postgres]' (make test-cluster installs it)")


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
    """Two launchers as two nodes of one CPU DDP run: one process each, rank 0 writes the one run."""
    launched = torchrun_nodes("--trainer.accelerator", "cpu", "--trainer.max_epochs", "2", *QUIET, cwd=tmp_path,
                              env={"DATA_DIR": str(FIXTURE)})
    for node in launched:
        assert node.returncode == 0, f"node {node.node_rank}:\n{node.output[-3000:]}"
    assert [r.name for r in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert len(scalars(run)["test/acc"]) == 2
    assert "[2] Test loss" in launched[0].output and "[2] Test loss" not in launched[1].output
