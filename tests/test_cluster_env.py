"""fashion_cnn.cluster: which cluster environment a run gets inside a SLURM step (issue 29), from the variables srun
sets; ``tests/cluster/`` runs the same under a real SLURM (``make test-cluster``)."""

from __future__ import annotations

import os

import lightning as L
import pytest
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only

from fashion_cnn.cluster import ClusterError, environment_plugins, run_processes


@pytest.fixture
def step(monkeypatch):
    """A function that makes this process look like task ``procid`` of a SLURM step of ``ntasks`` tasks (as srun
    sets its environment), Lightning's logging rank taken from it as Lightning does on import."""
    for key in [k for k in os.environ if k.startswith("SLURM_") or k in ("RANK", "LOCAL_RANK", "GROUP_RANK",
                                                                         "LOCAL_WORLD_SIZE", "WORLD_SIZE",
                                                                         "TORCHELASTIC_RUN_ID")]:
        monkeypatch.delenv(key)

    def enter(ntasks: int, procid: int = 0, per_node: int | None = None, job_name: str = "study") -> None:
        env = {"SLURM_NTASKS": ntasks, "SLURM_PROCID": procid, "SLURM_LOCALID": procid, "SLURM_NODEID": 0,
               "SLURM_NNODES": 1, "SLURM_JOB_ID": 1234, "SLURM_JOB_NAME": job_name, "SLURM_NODELIST": "node0"}
        if per_node is not None:
            env["SLURM_NTASKS_PER_NODE"] = per_node
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        monkeypatch.setattr(rank_zero_only, "rank", procid)

    return enter


def trainer(plugins: list, **settings) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     plugins=plugins, **settings)


def test_outside_slurm_lightning_decides(step):
    assert environment_plugins({"devices": 1, "num_nodes": 1}) == []


def test_a_single_process_run_in_a_step_of_two_tasks_is_its_tasks_own_rank_0(step):
    step(ntasks=2, procid=1)
    with pytest.raises(RuntimeError, match="You set `--ntasks=2` in your SLURM bash script"):  # Lightning alone
        trainer([], devices=1)
    plugins = environment_plugins({"devices": 1, "num_nodes": 1, "accelerator": "cpu"})
    assert [type(p) for p in plugins] == [LightningEnvironment]
    assert rank_zero_only.rank == 0  # its logs and checkpoints are written
    built = trainer(plugins, devices=1)
    assert (built.world_size, built.global_rank, built.is_global_zero) == (1, 0, True)


def test_with_ntasks_per_node_lightning_builds_a_single_process_run_that_logs_nothing(step):
    step(ntasks=2, procid=1, per_node=2)
    built = trainer([], devices=1)
    assert built.is_global_zero and rank_zero_only.rank == 1  # its logger and fit's run directory: rank 1's, none
    plugins = environment_plugins({"devices": 1, "num_nodes": 1})
    assert [type(p) for p in plugins] == [LightningEnvironment] and rank_zero_only.rank == 0


def test_a_run_with_one_process_per_task_is_slurms_without_its_requeue(step):
    step(ntasks=2, procid=1, per_node=2)
    plugins = environment_plugins({"devices": 2, "num_nodes": 1, "accelerator": "cpu"})
    assert [type(p) for p in plugins] == [SLURMEnvironment] and plugins[0].auto_requeue is False
    built = trainer(plugins, devices=2, strategy="ddp")
    assert (built.world_size, built.global_rank) == (2, 1)  # the task is rank 1 of the run


def test_a_one_task_step_starts_the_runs_processes_itself(step):
    step(ntasks=1)
    assert [type(p) for p in environment_plugins({"devices": 2, "num_nodes": 1})] == [LightningEnvironment]


@pytest.mark.parametrize(("ntasks", "per_node", "devices", "message"), [
    (4, 4, 2, "this SLURM step has 4 tasks, and the run has 2 processes (--trainer.devices 2 x --trainer.num_nodes 1)"
              ": give each process of the run one task (srun --nodes=1 --ntasks-per-node=2), or each task a run of "
              "one process (--trainer.devices 1)"),
    (2, None, 2, "a run of 2 processes as the tasks of a SLURM step needs the tasks per node set: use srun or "
                 "sbatch --nodes=1 --ntasks-per-node=2 instead of --ntasks=2"),
])
def test_tasks_that_contradict_the_runs_processes_are_one_line(step, ntasks, per_node, devices, message):
    step(ntasks=ntasks, per_node=per_node)
    with pytest.raises(ClusterError) as refused:
        environment_plugins({"devices": devices, "num_nodes": 1})
    assert str(refused.value) == message


@pytest.mark.parametrize("plugins", [
    [LightningEnvironment()],
    [{"class_path": "fashion_cnn.checkpoints.AtomicCheckpointIO"},
     {"class_path": "lightning.fabric.plugins.environments.LightningEnvironment"}],
])
def test_an_environment_the_config_names_stands(step, plugins):
    step(ntasks=2)
    assert environment_plugins({"devices": 1, "num_nodes": 1, "plugins": plugins}) == []


def test_torchrun_and_interactive_jobs_are_left_to_lightning(step, monkeypatch):
    step(ntasks=2, job_name="interactive")
    assert environment_plugins({"devices": 1, "num_nodes": 1}) == []
    step(ntasks=2)
    torchrun = {"TORCHELASTIC_RUN_ID": "none", "RANK": 1, "GROUP_RANK": 0, "LOCAL_RANK": 1, "LOCAL_WORLD_SIZE": 2}
    for key, value in torchrun.items():
        monkeypatch.setenv(key, str(value))
    assert environment_plugins({"devices": 2, "num_nodes": 1}) == []


@pytest.mark.parametrize(("devices", "num_nodes", "processes"), [
    (1, 1, 1), (2, 3, 6), ("3", 1, 3), ("0,1", 2, 4), ([0, 1, 2], 1, 3), ("auto", 2, 2), (-1, 1, 1),
])
def test_run_processes_on_the_cpu(devices, num_nodes, processes):
    assert run_processes(devices, num_nodes, "cpu") == processes
