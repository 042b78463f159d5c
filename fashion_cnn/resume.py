"""Whether a checkpoint can be resumed with a config: the checks fit runs before Lightning touches the run, so that
a mismatch is one line that says how to resume instead of a failure deep inside Lightning or torch (or, worse, a run
that goes on silently with another recipe)."""

from __future__ import annotations

from pathlib import Path

from fashion_cnn.checkpoints import CheckpointError, build_net, net_name
from fashion_cnn.module import parameter_group_count
from fashion_cnn.runs import run_config, run_dir_of


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
    learning rate, batch size and schedule. Options the checkpoint predates are not compared."""
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


def check_same_length(path: Path, trainer: dict) -> None:
    """Raise :class:`CheckpointError` if the config trains for another length than the checkpoint's run (its
    config.yaml, when there is one; :class:`~fashion_cnn.runs.RunError` when that is damaged), for a one-cycle
    schedule: laid out over the run's steps, it cannot be extended, and torch would fail with a traceback once past
    the old end. Checked before the run is touched; Lightning's own setup would already write into it
    (:meth:`~fashion_cnn.module.FashionClassifier.configure_optimizers` checks the steps themselves there, when
    there is no config.yaml to go by)."""
    saved = run_config(run_dir_of(path)).get("trainer") or {}
    for key in ("max_epochs", "max_steps", "limit_train_batches", "accumulate_grad_batches"):
        if key in saved and saved[key] != trainer.get(key):
            raise CheckpointError(f"{path} was trained with a one-cycle schedule laid out over trainer.{key}="
                                  f"{saved[key]}, and this config has {trainer.get(key)}: resume it with the run's "
                                  f"own trainer.{key} (to train longer, start a new run with the longer schedule)")


def _resume_with(path: Path) -> str:
    """The options that resume ``path`` as it was trained."""
    config = run_dir_of(path) / "config.yaml"
    return f"--config {config} --ckpt_path {path}" if config.is_file() else "the config it was trained with"
