"""Find, load and save checkpoints: the one place fit, evaluate, predict and export get a model from.

``best`` and ``last`` name the checkpoints of the newest ``lightning_logs/version_N`` run; anything else is a path.
Loading always uses ``weights_only=True``, so a checkpoint whose pickle would run code is refused, never executed.
Saving (:class:`AtomicCheckpointIO`) writes beside the target and renames, so a checkpoint is never half-written.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from fashion_cnn.datamodule import FashionMNISTDataModule
from fashion_cnn.errors import FashionCNNError, first_line
from fashion_cnn.module import parameter_group_count
from fashion_cnn.nets import SeedCNN, ViewAverage

NAMED = ("best", "last")
RUN_DIR = re.compile(r"version_(\d+)")  # a run's directory name under lightning_logs/
_TRAIN_HINT = "train one with `make train` (or `python -m fashion_cnn.fit`)"


class CheckpointError(FashionCNNError):
    """A checkpoint that cannot be found or loaded; the message is one line: what is wrong and how to fix it."""


@dataclass(frozen=True)
class Loaded:
    """A checkpoint's network (eval mode, CPU) and the data settings it was trained with."""

    path: Path
    net: nn.Module
    datamodule: FashionMNISTDataModule  # not set up: its hparams (mean, std, data_dir, ...) and normalize()
    train_images: int | None = None  # the training set's size when it trained (None: a checkpoint from before)

    @property
    def run_dir(self) -> Path:
        """The run directory the checkpoint belongs to."""
        return run_dir_of(self.path)

    @property
    def mirrored(self) -> bool:
        """Whether the run evaluated with mirror test-time augmentation (``model.eval_mirror``), and so ``net`` does."""
        return isinstance(self.net, ViewAverage) and self.net.mirror

    @property
    def shift(self) -> int:
        """The shifted test-time views ``net`` averages in (``model.final_shift``, pixels; 0: none)."""
        return self.net.shift if isinstance(self.net, ViewAverage) else 0

    def with_views(self, mirror: bool = False, shift: int | None = None) -> Loaded:
        """This checkpoint with other test-time views (:func:`~fashion_cnn.nets.views`): mirror images added if
        ``mirror``, and images shifted by ``shift`` pixels instead of the run's own ``final_shift`` (0: none) unless
        ``None``; its ``mirrored`` and ``shift`` say which views its ``net`` averages."""
        mirror = mirror or self.mirrored
        shift = self.shift if shift is None else shift
        if (mirror, shift) == (self.mirrored, self.shift):
            return self
        base = self.net.net if isinstance(self.net, ViewAverage) else self.net
        net = ViewAverage(base, mirror=mirror, shift=shift, fill=self.datamodule.black) if mirror or shift else base
        return replace(self, net=net)

    @property
    def mean(self) -> float:
        """The normalisation mean the network was trained with."""
        return float(self.datamodule.hparams.mean)

    @property
    def std(self) -> float:
        """The normalisation std the network was trained with."""
        return float(self.datamodule.hparams.std)


def newest_run(logs_dir: str | Path = "lightning_logs", holding: str = "checkpoints/*.ckpt",
               logs_option: str = "--logs_dir") -> Path:
    """The ``version_N`` directory with the highest N that holds files matching ``holding`` (a run that died
    early has no checkpoints, so it is passed over); ``logs_option``: the caller's option that names ``logs_dir``."""
    logs_dir = Path(logs_dir)
    runs = [(int(m.group(1)), p) for p in (logs_dir.iterdir() if logs_dir.is_dir() else [])
            if (m := RUN_DIR.fullmatch(p.name)) and any(p.glob(holding))]
    if not runs:
        raise CheckpointError(f"no run in {logs_dir}/ has {holding} (looked in version_N/); "
                              f"{_TRAIN_HINT}, or pass {logs_option}")
    return max(runs)[1]


def newest(directory: Path, pattern: str) -> Path | None:
    """The newest file in ``directory`` matching ``pattern``: a resumed run may have left an older best-*.ckpt beside
    the current one (whose name, with a lower epoch, sorts first)."""
    return max(directory.glob(pattern), key=lambda p: p.stat().st_mtime, default=None)


def resolve(ckpt_path: str | Path, logs_dir: str | Path = "lightning_logs", logs_option: str = "--logs_dir") -> Path:
    """``best``/``last`` of the newest run under ``logs_dir``, or the given path, checked to be an existing file.

    ``best`` is the checkpoint the run reported: the one its validation split picked, or (a run without a validation
    split keeps no other) its last epoch's."""
    if str(ckpt_path) in NAMED:
        checkpoints = newest_run(logs_dir, logs_option=logs_option) / "checkpoints"
        patterns = ("best*.ckpt", "last*.ckpt") if str(ckpt_path) == "best" else ("last*.ckpt",)
        for pattern in patterns:
            if found := newest(checkpoints, pattern):
                return found
        raise CheckpointError(f"no {' or '.join(patterns)} in {checkpoints}/; give --ckpt_path a .ckpt file from there")
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a .ckpt file "
                              f"(e.g. lightning_logs/version_0/checkpoints/last.ckpt), or `best`/`last`")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file; give a .ckpt file inside it")
    return path


def run_scalars(run_dir: Path) -> dict[str, list[Any]]:
    """Every scalar a run logged to TensorBoard, by tag: its events (``step``, ``wall_time``, ``value``) in order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # slow import: only here

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


def run_config(run_dir: Path) -> dict:
    """A run's config.yaml as a mapping ({} when it has none); :class:`CheckpointError` when it is not a fit config."""
    path = run_dir / "config.yaml"
    try:
        raw = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path} cannot be read ({first_line(err)}): put back the "
                              f"config.yaml fit wrote there, or move the run aside") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("trainer") or {}, dict):
        raise CheckpointError(f"{path}: not a fit config (a mapping with trainer, model and data)")
    return raw


def run_dir_of(ckpt: Path) -> Path:
    """The run directory (parent of ``checkpoints/``), or the checkpoint's own directory outside a run."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def study_run_dir(run_dir: Path, study_dir: Path) -> Path:
    """A study's run as it lies now: a study keeps its runs in its own directory, so when that directory has been
    moved or copied (the database holds absolute paths), the run is the one of the same name beside the database."""
    here = study_dir / "lightning_logs" / run_dir.name
    return here if not run_dir.is_relative_to(study_dir.resolve()) and here.is_dir() else run_dir


def read(path: Path) -> dict:
    """The checkpoint dict, read with ``weights_only=True``; any failure becomes a :class:`CheckpointError`."""
    if _is_torchscript(path):  # torch.load would warn twice, then call it truncated
        raise CheckpointError(f"{path} is an exported TorchScript model, not a training checkpoint; give the run's "
                              f".ckpt (e.g. lightning_logs/version_N/checkpoints/last.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch raises this when the pickle asks for anything beyond tensors and plain containers: code to run.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it asks for {found.group(1)}" if found else "torch refused it under weights_only=True"
        raise CheckpointError(
            f"{path} is not a plain weights checkpoint: its pickle would run code ({what}), so it was not loaded; "
            f"use a checkpoint written by fashion_cnn.fit, and open other files only if you trust them") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({first_line(err, 160)}); "
                              f"copy it again or use another checkpoint (e.g. last.ckpt of the same run)") from None
    missing = [k for k in ("state_dict", "hyper_parameters", "datamodule_hyper_parameters")
               if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a fashion_cnn.fit checkpoint (it lacks {', '.join(missing)}); "
                              f"use a .ckpt file from lightning_logs/version_N/checkpoints/")
    return checkpoint


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with the scripted code's constants.pkl beside its data)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def net_name(net_config: dict | None) -> str:
    """The class path of a network as the ``model.net`` config (or a checkpoint's hparams) describes it."""
    return (net_config or {}).get("class_path", f"{SeedCNN.__module__}.{SeedCNN.__name__}")


def build_net(net_config: dict | None) -> nn.Module:
    """The network a ``model.net`` config describes (``class_path`` and ``init_args``, as LightningCLI records it
    in a checkpoint's hyperparameters; None: the default :class:`~fashion_cnn.nets.SeedCNN`).

    Only an ``nn.Module`` subclass is instantiated: a checkpoint cannot make this call anything else.
    """
    module_name, _, class_name = net_name(net_config).rpartition(".")
    net_class = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(net_class, type) and issubclass(net_class, nn.Module)):
        raise TypeError(f"{net_name(net_config)} is not a torch.nn.Module")
    return net_class(**(net_config or {}).get("init_args", {}))


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
    config.yaml, when there is one), for a one-cycle schedule: laid out over the run's steps, it cannot be extended,
    and torch would fail with a traceback once past the old end. Checked before the run is touched; Lightning's own
    setup would already write into it (:meth:`~fashion_cnn.module.FashionClassifier.configure_optimizers` checks
    the steps themselves there, when there is no config.yaml to go by)."""
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


def load(ckpt_path: str | Path, logs_dir: str | Path = "lightning_logs") -> Loaded:
    """Resolve ``ckpt_path`` (a path, ``best`` or ``last``) and rebuild its network and data settings on the CPU.

    A run trained with ``model.eval_mirror`` or ``model.final_shift`` gives its network wrapped in
    :class:`~fashion_cnn.nets.ViewAverage`, so evaluate, predict and export see what the run's own final test saw.
    The network is built from the checkpoint's ``net`` hyperparameter and given its ``net.*`` weights; no
    LightningModule is made, so nothing named in the checkpoint but a network class is ever called.
    """
    path = resolve(ckpt_path, logs_dir)
    checkpoint = read(path)
    hparams = checkpoint["hyper_parameters"]
    try:
        net = build_net(hparams.get("net"))
        weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        net.load_state_dict(weights)
        if hparams.get("channels_last"):  # the memory format FashionClassifier trained and tested it in
            net = net.to(memory_format=torch.channels_last)
        data_hparams = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if not k.startswith("_")}
        if not data_hparams.get("augment"):  # training-only options that did nothing (runs from before they were
            data_hparams = {k: v for k, v in data_hparams.items() if k not in ("erase", "flip")}  # refused)
        datamodule = FashionMNISTDataModule(**data_hparams)
        mirror, shift = bool(hparams.get("eval_mirror")), int(hparams.get("final_shift") or 0)
        if mirror or shift:  # averaged over the views the run's final test averaged over
            net = ViewAverage(net, mirror=mirror, shift=shift, fill=datamodule.black)
    except (RuntimeError, KeyError, TypeError, ValueError, ImportError, AttributeError) as err:
        raise CheckpointError(f"{path}: cannot rebuild {net_name(hparams.get('net'))} from it ({first_line(err)}); "
                              f"it may come from another version of fashion_cnn: use the code version that wrote "
                              f"it") from None
    train_images = (checkpoint.get(FashionMNISTDataModule.__qualname__) or {}).get("train_images")
    return Loaded(path=path, net=net.eval(), datamodule=datamodule, train_images=train_images)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves a checkpoint to a temporary file in the same directory, syncs it, then renames it over the target.

    A kill or crash during a save leaves the previous checkpoint whole. (Lightning's own save stages the file in
    the system's temporary directory, which may be another filesystem, where the final move is a copy.)
    """

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            # Serialised in memory first (a few MB here): torch.save writing to the file itself reports a full disk
            # as an obscure RuntimeError from its zip writer, a plain write as OSError ENOSPC.
            data = io.BytesIO()
            torch.save(checkpoint, data)
            with open(partial, "wb") as f:
                f.write(data.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        except OSError as err:  # e.g. a full disk: name the checkpoint, which a bare write error does not
            raise OSError(err.errno, err.strerror, str(path)) from err
        finally:
            partial.unlink(missing_ok=True)
