"""The cluster environment a run's Trainer gets inside a SLURM step (issue 29).

Lightning takes every process that sees ``SLURM_NTASKS`` (a task of an ``srun`` step, or a batch script run with
``--ntasks``) for one rank of a DDP run launched by SLURM (``SLURMEnvironment``): its world size is the step's task
count and its rank the task's ``SLURM_PROCID``. That is right for ``srun`` DDP, one task per process of the run, and
wrong for a study's workers started as the tasks of ``srun --ntasks=N``, each running single-process trials of its
own: Lightning refuses every trial (``RuntimeError: You set `--ntasks=2` in your SLURM bash script, but this
variable is not supported``; with ``--ntasks-per-node=2``, ``ValueError: You set `devices=1` in Lightning, but the
number of tasks per node configured in SLURM `--ntasks-per-node=2` does not match``).

:func:`environment_plugins` says which environment a run needs from the run's own trainer settings (devices and
num_nodes), through Lightning's API (a cluster environment among the Trainer's ``plugins``):

- a single-process run, or a step of one task (which starts the run's processes itself): ``LightningEnvironment``,
  whatever the step's size: the task is the whole run, and its rank 0;
- a run of as many processes as the step has tasks: ``SLURMEnvironment(auto_requeue=False)``, one task per process
  (no requeue on SIGUSR1: this project stops on SIGTERM and requeues itself, docs/scaling.md);
- any other count: a one-line :class:`ClusterError` before anything starts.

Outside SLURM, under torchrun (its environment comes first, as in Lightning), in SLURM's interactive mode, and when
the config already names a cluster environment, it adds nothing: Lightning's own choice stands.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.utilities import rank_zero_only

from fashion_cnn.errors import FashionCNNError


class ClusterError(FashionCNNError):
    """A run whose processes do not match the SLURM step it runs in."""


def slurm_tasks() -> int | None:
    """The task count of the SLURM step (or batch script) this process runs in; None outside one, and in SLURM's
    interactive mode (job name ``bash`` or ``interactive``), where Lightning does not take it for one either."""
    ntasks = os.environ.get("SLURM_NTASKS")
    if ntasks is None or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    return int(ntasks)


def run_processes(devices: Any, num_nodes: int, accelerator: Any = "auto") -> int:
    """How many processes a run of these Trainer settings has: its devices per node times its nodes. ``devices`` as
    the Trainer takes it: a count, a list of indices, a string of either, ``"auto"`` or -1 (every GPU, or 1 CPU)."""
    if isinstance(devices, str):
        text = devices.strip()
        if text.lstrip("-").isdigit():
            devices = int(text)
        elif text != "auto":
            devices = [d for d in text.split(",") if d.strip()]
    if devices in ("auto", -1, None):
        gpu = str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if gpu else 1
    elif isinstance(devices, Sequence):
        per_node = len(devices)
    else:
        per_node = int(devices)
    return per_node * int(num_nodes or 1)


def environment_plugins(trainer: Mapping[str, Any]) -> list[ClusterEnvironment]:
    """The cluster environment to add to the Trainer's ``plugins`` for a run with these settings (a trainer config:
    ``devices``, ``num_nodes``, ``accelerator``, ``plugins``), or none; :class:`ClusterError` for a run whose
    processes contradict the SLURM step's tasks. Call it before anything reads the rank (fit's run directory):
    where the task becomes rank 0 of its own run, it sets Lightning's rank for logging (``rank_zero_only.rank``),
    which Lightning took from ``SLURM_PROCID`` when it was imported."""
    ntasks = slurm_tasks()
    if ntasks is None or TorchElasticEnvironment.detect() or _names_an_environment(trainer.get("plugins")):
        return []
    devices, num_nodes = trainer.get("devices", "auto"), trainer.get("num_nodes", 1) or 1
    processes = run_processes(devices, num_nodes, trainer.get("accelerator", "auto"))
    if processes == 1 or ntasks == 1:
        if processes == 1:  # (a run that starts its own processes gets its ranks from its strategy)
            rank_zero_only.rank = 0
        return [LightningEnvironment()]
    if processes != ntasks:
        raise ClusterError(
            f"this SLURM step has {ntasks} tasks, and the run has {processes} processes (--trainer.devices {devices} "
            f"x --trainer.num_nodes {num_nodes}): give each process of the run one task (srun --nodes={num_nodes} "
            f"--ntasks-per-node={processes // num_nodes}), or each task a run of one process (--trainer.devices 1)")
    if "SLURM_NTASKS_PER_NODE" not in os.environ:  # what Lightning's SLURMEnvironment would refuse, in one line
        raise ClusterError(
            f"a run of {processes} processes as the tasks of a SLURM step needs the tasks per node set: use srun or "
            f"sbatch --nodes={num_nodes} --ntasks-per-node={processes // num_nodes} instead of --ntasks={ntasks}")
    return [SLURMEnvironment(auto_requeue=False)]


def _names_an_environment(plugins: Any) -> bool:
    """Whether the configured ``plugins`` (instantiated, or still class paths) hold a cluster environment."""
    if plugins is None:
        return False
    for plugin in plugins if isinstance(plugins, (list, tuple)) else [plugins]:
        if isinstance(plugin, ClusterEnvironment):
            return True
        class_path = plugin.get("class_path", "") if isinstance(plugin, Mapping) else getattr(plugin, "class_path", "")
        if class_path.endswith("Environment"):
            return True
    return False
