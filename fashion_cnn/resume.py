"""Continuing a run from a checkpoint: whether the config may (checked before Lightning touches the run, so that a
mismatch is one line that says how to resume instead of a failure deep inside Lightning or torch, or a run that goes
on silently with another recipe), which run it continues and where its logs go, and how a stopped run goes on.

Two checks need what only Lightning's restore knows, and run there: the training set's size
(:meth:`~fashion_cnn.datamodule.FashionMNISTDataModule.load_state_dict`) and a one-cycle schedule's length
(:meth:`~fashion_cnn.module.FashionClassifier.configure_optimizers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jsonargparse import Namespace

from fashion_cnn import checkpoints
from fashion_cnn.checkpoints import CheckpointError, build_net, net_name
from fashion_cnn.commands import check_writable
from fashion_cnn.config import SAVE_DIR_OPTION
from fashion_cnn.module import parameter_group_count
from fashion_cnn.runs import RUN_DIR, run_dir_of


@dataclass(frozen=True)
class Resume:
    """Where a run continues: the checkpoint, its global step, and the ``version_N`` run it belongs to, wherever
    that lies (None: a checkpoint outside a run's ``checkpoints/``, which starts a new run)."""

    checkpoint: Path
    step: int
    run: Path | None


def plan(config: Namespace, log_root: Path | None) -> Resume:
    """Check the checkpoint a fit config's ``ckpt_path`` names (``best``/``last`` of the newest run under
    ``log_root``, or a path) against the config, reading it as weights only (a pickle that would run code is
    refused), and say where the run continues; ``ckpt_path`` becomes the checkpoint's path."""
    path = checkpoints.resolve(config.ckpt_path, log_root or "lightning_logs", SAVE_DIR_OPTION)
    checkpoint = checkpoints.read(path)
    net = config.model.net
    check_same_network(checkpoint, path, net.as_dict() if net is not None else None)
    check_same_optimizer(checkpoint, path, config.model.bn_bias_lr_scale)
    check_same_recipe(checkpoint, path, config.model.as_dict(), config.data.as_dict())
    config.ckpt_path, run = str(path), run_dir_of(path)
    in_a_run = log_root is not None and path.parent.name == "checkpoints" and RUN_DIR.fullmatch(run.name)
    return Resume(path, checkpoint["global_step"], run if in_a_run else None)


def log_into_its_run(logger: Namespace, log_root: Path, resume: Resume) -> None:
    """Point a TensorBoard logger's config at the run ``resume`` continues, wherever it lies: a run copied or moved
    elsewhere (whose config.yaml still names the old place) continues there, not in a new run beside the original."""
    run = resume.run
    if run.parent.resolve() != log_root.resolve():
        check_writable(run, SAVE_DIR_OPTION)
        logger.init_args.save_dir, logger.init_args.name = str(run.parent.parent), run.parent.name
    logger.init_args.version = int(RUN_DIR.fullmatch(run.name).group(1))
    # The interrupted run logged steps after its checkpoint that the resumed one logs again: purge_step hides the
    # first copies in TensorBoard, so every step and epoch appears once.
    logger.dict_kwargs = {**(logger.get("dict_kwargs") or {}), "purge_step": resume.step}


def how_to_continue(last: Path | None, how: str | None = None) -> str:
    """How a stopped run goes on: from ``last``, its last complete checkpoint (``how``: the caller's way, else fit's
    ``--ckpt_path last``), or from the start when it has none."""
    if last is None or not last.is_file():
        return "it had saved no checkpoint yet: start it again"
    epoch = checkpoints.read(last)["epoch"] + 1
    how = how or f"continue with the same command and --ckpt_path last (or --ckpt_path {last})"
    return f"{last} (end of epoch {epoch}) is intact: {how}"


def last_checkpoint(run_dir: Path) -> Path | None:
    """A run's ``last.ckpt``, where a stopped or killed run continues from (None: it saved none)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def check_same_network(checkpoint: dict, path: Path, net_config: dict | None) -> None:
    """Raise :class:`CheckpointError` unless the network ``net_config`` builds has exactly the checkpoint's weights
    (names and shapes): resuming another network would fail deep inside Lightning with a multi-line error."""
    ours = {k: tuple(v.shape) for k, v in build_net(net_config).state_dict().items()}
    theirs = {k.removeprefix("net."): tuple(v.shape) for k, v in checkpoint["state_dict"].items()
              if k.startswith("net.")}
    if ours == theirs:
        return
    trained, configured = net_name(checkpoint["hyper_parameters"].get("net")), net_name(net_config)
    if trained != configured:
        what = f"{trained}, but this config builds {configured}"
    else:
        differs = next(k for k in sorted(ours.keys() | theirs.keys()) if ours.get(k) != theirs.get(k))
        what = (f"{trained} with other options than this config's ({differs}: {theirs.get(differs)} in the "
                f"checkpoint, {ours.get(differs)} here)")
    raise CheckpointError(f"{path} was trained with {what}; resume it with {_resume_with(path)}")


def check_same_optimizer(checkpoint: dict, path: Path, bn_bias_lr_scale: float) -> None:
    """Raise :class:`CheckpointError` unless ``model.bn_bias_lr_scale`` gives the optimizer the checkpoint's parameter
    groups: torch would refuse the optimizer state with a multi-line error."""
    theirs = float(checkpoint["hyper_parameters"].get("bn_bias_lr_scale", 1.0))
    if parameter_group_count(theirs) != parameter_group_count(bn_bias_lr_scale):
        raise CheckpointError(f"{path} was trained with model.bn_bias_lr_scale={theirs:g}, whose optimizer state this "
                              f"config's {bn_bias_lr_scale:g} cannot continue; resume it with {_resume_with(path)}")


# Options a resumed run may change: where the data is and how it is read or evaluated, how the same network runs,
# and the final test's views (after training)
RESUMABLE_CHANGES = {"model.compile", "model.channels_last", "model.final_shift", "data.data_dir", "data.num_workers",
                     "data.verify", "data.download", "data.eval_batch_size"}


def check_same_recipe(checkpoint: dict, path: Path, model: dict, data: dict) -> None:
    """Raise :class:`CheckpointError` unless the config's model and data options (the network aside:
    :func:`check_same_network`; and :data:`RESUMABLE_CHANGES`) are the checkpoint's: a run resumed with another
    recipe (``--ckpt_path last`` without the run's ``--config fast``, say) would go on silently with this one's
    learning rate, batch size and schedule."""
    differs = [(f"{prefix}.{key}", value, ours[key])
               for prefix, theirs, ours in (("model", checkpoint["hyper_parameters"], model),
                                            ("data", checkpoint["datamodule_hyper_parameters"], data))
               for key, value in theirs.items()
               if key != "net" and not key.startswith("_") and f"{prefix}.{key}" not in RESUMABLE_CHANGES
               and key in ours and ours[key] != value]
    if differs:
        trained = ", ".join(f"{name}={value}" for name, value, _ in differs[:3])
        here = ", ".join(f"{name}={value}" for name, _, value in differs[:3])
        more = f" and {len(differs) - 3} more" if len(differs) > 3 else ""
        raise CheckpointError(f"{path} was trained with {trained}{more}, this config has {here}; resume it with "
                              f"{_resume_with(path)}")


def _resume_with(path: Path) -> str:
    """The options that resume ``path`` as it was trained."""
    config = run_dir_of(path) / "config.yaml"
    return f"--config {config} --ckpt_path {path}" if config.is_file() else "the config it was trained with"
