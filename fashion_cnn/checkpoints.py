"""Find, load and save checkpoints: the one place fit, evaluate, predict and export get a model from.

``best`` and ``last`` name the checkpoints of the newest ``lightning_logs/version_N`` run; anything else is a path.
Loading always uses ``weights_only=True``, so a checkpoint whose pickle would run code is refused, never executed.
Saving (:class:`AtomicCheckpointIO`) writes beside the target and renames, so a checkpoint is never half-written.
Where runs lie: :mod:`fashion_cnn.runs`; whether a config may resume a checkpoint: :mod:`fashion_cnn.resume`.
"""

from __future__ import annotations

import _compat_pickle  # the Python 2 names of globals, as pickle maps them
import importlib
import io
import os
import pickle
import pickletools
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from fashion_cnn.claim import pid_runs
from fashion_cnn.datamodule import FashionMNISTDataModule
from fashion_cnn.errors import FashionCNNError, first_line
from fashion_cnn.nets import SeedCNN, ViewAverage
from fashion_cnn.runs import newest, newest_run, run_dir_of

NAMED = ("best", "last")


class CheckpointError(FashionCNNError):
    """A checkpoint that cannot be found or loaded; the message is one line: what is wrong and how to fix it."""


@dataclass(frozen=True)
class Loaded:
    """A checkpoint's network (eval mode, CPU) and the data settings it was trained with."""

    path: Path
    net: nn.Module
    datamodule: FashionMNISTDataModule  # not set up: its hparams (mean, std, data_dir, ...) and normalize()
    train_images: int | None = None  # the training set's size when it trained (None: not recorded)
    epoch: int | None = None  # the epoch it was saved at the end of (1-based), and the training step: which weights
    global_step: int | None = None  # these are, in a run that has gone on since

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


def read(path: Path) -> dict:
    """The checkpoint dict, read with ``weights_only=True``; any failure becomes a :class:`CheckpointError`."""
    if _is_torchscript(path):  # torch.load would warn twice, then call it truncated
        raise CheckpointError(f"{path} is an exported TorchScript model, not a training checkpoint; give the run's "
                              f".ckpt (e.g. lightning_logs/version_N/checkpoints/last.ckpt)")
    with warnings.catch_warnings(record=True) as warned:  # a refusal's one line stands for all torch said
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # e.g. UnpicklingError, RuntimeError, EOFError, BadZipFile, IndexError (a text file)
            raise _refused_file(path, err) from None
    for w in warned:  # a file it loaded: its warnings as torch gave them (a pickle protocol it may not read, say)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    missing = [k for k in ("state_dict", "hyper_parameters", "datamodule_hyper_parameters")
               if not isinstance(checkpoint, dict) or k not in checkpoint]
    missing += [f"{k} as a mapping" for k in ("state_dict", "hyper_parameters", "datamodule_hyper_parameters")
                if k not in missing and not isinstance(checkpoint[k], dict)]  # a hand-edited or foreign file
    if missing:
        raise CheckpointError(f"{path} is not a fashion_cnn.fit checkpoint (it lacks {', '.join(missing)}); "
                              f"use a .ckpt file from lightning_logs/version_N/checkpoints/")
    return checkpoint


def _refused_file(path: Path, err: Exception) -> CheckpointError:
    """Why ``torch.load(weights_only=True)`` refused ``path`` (raising ``err``): a pickle that would run code, told
    by the globals it asks for (read, never run), whatever torch's message says; else a file of another kind, or a
    damaged one."""
    if unsafe := unsafe_globals(path):
        return CheckpointError(f"{path} is not a plain weights checkpoint: its pickle would run code (it asks for "
                               f"{', '.join(unsafe)}), so it was not loaded; use a checkpoint written by "
                               f"fashion_cnn.fit, and open other files only if you trust them")
    if isinstance(err, pickle.UnpicklingError):  # a pickle of something else, or no pickle (a YAML or PNG file)
        return CheckpointError(f"{path} is not a PyTorch checkpoint; give a .ckpt file fit wrote "
                               f"(e.g. lightning_logs/version_N/checkpoints/last.ckpt)")
    return CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({first_line(err, 160)}); copy it again "
                           f"or use another checkpoint (e.g. last.ckpt of the same run)")


def unsafe_globals(path: Path) -> list[str]:
    """The globals (``module.name``) ``path``'s pickle asks for that ``torch.load(weights_only=True)`` refuses: the
    functions and classes it would call, read without running anything. Empty for a file that names none (a
    checkpoint of tensors and plain containers, or no pickle at all)."""
    try:  # a zip as torch.save writes it: torch lists them itself
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not such a zip (a legacy torch.save or a plain pickle), or opcodes torch's reader lacks
        unsafe = _refused(_named_globals(path))
    return sorted({_python3_name(name) for name in unsafe})


def _python3_name(name: str) -> str:
    """A global as Python 3 names it: torch.save's pickles (protocol 2) spell some as Python 2 did
    (``commands.Popen`` for ``subprocess.Popen``), which unpickling maps back as this does."""
    module, _, attr = name.rpartition(".")
    module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (_compat_pickle.IMPORT_MAPPING.get(module, module),
                                                                    attr))
    return f"{module}.{attr}"


LEGACY_PICKLES = 5  # a legacy torch.save: magic number, protocol, system info, the object, its storages' keys


def _named_globals(path: Path) -> set[tuple[str, str]]:
    """Every global, as (module, name), that the pickles in ``path`` name: its ``data.pkl`` in a zip, else the
    pickles a legacy torch.save (or pickle.dump) wrote at its start; only whole pickles count."""
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if pkl is None:
                return set()
            with archive.open(pkl) as stream:
                return _pickle_globals(stream, 1)
    except zipfile.BadZipFile:
        pass
    except (OSError, ValueError, EOFError):  # a damaged zip
        return set()
    with path.open("rb") as f:
        return _pickle_globals(f, LEGACY_PICKLES)


def _pickle_globals(stream: IO[bytes], count: int) -> set[tuple[str, str]]:
    """The globals named by up to ``count`` consecutive pickles in ``stream``, read with pickletools, never run:
    GLOBAL's argument, or the last two strings STACK_GLOBAL takes (pushed, or fetched from the memo). It stops at
    the first incomplete pickle. The message alone depends on it: torch refuses such a file whatever it finds."""
    found: set[tuple[str, str]] = set()
    for _ in range(count):
        strings: list[str] = []
        memo: dict[int, object] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.add(tuple(arg.split(" ", 1)))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.add((strings[-2], strings[-1]))
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                    memo[len(memo) if op.name == "MEMOIZE" else arg] = strings[-1] if strings else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET") and isinstance(memo.get(arg), str):
                    strings.append(memo[arg])
                elif isinstance(arg, str) and op.name.endswith(("STRING", "UNICODE", "UNICODE8")):
                    strings.append(arg)
        except (ValueError, IndexError, EOFError, OSError):  # not a pickle, or the file ends inside one
            break
    return found


def _refused(names: set[tuple[str, str]]) -> list[str]:
    """Those of ``names`` that ``torch.load(weights_only=True)`` refuses, as torch itself tells: asked of
    ``get_unsafe_globals_in_checkpoint`` with an archive as torch.save writes it, whose pickle only names them."""
    plain = {(m, n) for m, n in names if all(part.isidentifier() for part in f"{m}.{n}".split("."))}
    refused = {f"{m}.{n}" for m, n in names - plain}  # no allowlist holds a name that is not Python's
    if plain:
        blank, probe = io.BytesIO(), io.BytesIO()
        torch.save(None, blank)
        pickled = b"\x80\x02(" + b"".join(f"c{m}\n{n}\n".encode() for m, n in sorted(plain)) + b"t."
        with zipfile.ZipFile(blank) as src, zipfile.ZipFile(probe, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, pickled if info.filename.endswith("/data.pkl") else src.read(info))
        probe.seek(0)
        refused |= set(torch.serialization.get_unsafe_globals_in_checkpoint(probe))
    return sorted(refused)


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with the scripted code's constants.pkl beside its data)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def net_name(net_config: dict | str | None) -> str:
    """The class path of a network as the ``model.net`` config (or a checkpoint's hparams) describes it."""
    if isinstance(net_config, str):  # a class path alone, as a config may give it
        return net_config
    default = f"{SeedCNN.__module__}.{SeedCNN.__name__}"
    return str(net_config.get("class_path", default)) if isinstance(net_config, dict) else default


def build_net(net_config: dict | str | None) -> nn.Module:
    """The network a ``model.net`` config describes (``class_path`` and ``init_args``, as LightningCLI records it
    in a checkpoint's hyperparameters; None: the default :class:`~fashion_cnn.nets.SeedCNN`).

    Only an ``nn.Module`` subclass is instantiated: a checkpoint cannot make this call anything else.
    """
    module_name, _, class_name = net_name(net_config).rpartition(".")
    net_class = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(net_class, type) and issubclass(net_class, nn.Module)):
        raise TypeError(f"{net_name(net_config)} is not a torch.nn.Module")
    return net_class(**(net_config.get("init_args") or {} if isinstance(net_config, dict) else {}))


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
        datamodule = FashionMNISTDataModule(**data_hparams)
        mirror, shift = bool(hparams.get("eval_mirror")), int(hparams.get("final_shift") or 0)
        if mirror or shift:  # averaged over the views the run's final test averaged over
            net = ViewAverage(net, mirror=mirror, shift=shift, fill=datamodule.black)
    except (RuntimeError, KeyError, TypeError, ValueError, ImportError, AttributeError) as err:
        raise CheckpointError(f"{path}: cannot rebuild {net_name(hparams.get('net'))} from it ({first_line(err)}); "
                              f"it may come from another version of fashion_cnn: use the code version that wrote "
                              f"it") from None
    state = checkpoint.get(FashionMNISTDataModule.__qualname__)  # the data module's state_dict
    train_images = state.get("train_images") if isinstance(state, dict) else None
    epoch = checkpoint.get("epoch")
    return Loaded(path=path, net=net.eval(), datamodule=datamodule, train_images=train_images,
                  epoch=epoch + 1 if isinstance(epoch, int) else None, global_step=checkpoint.get("global_step"))


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
        for stale in path.parent.glob(f".{path.name}.partial-*"):  # left by a process killed mid-save (kill -9)
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pid_runs(int(pid)):
                stale.unlink(missing_ok=True)
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


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that keeps its record (the best score, the best and last checkpoints) when the
    run's directory was moved or copied since the checkpoint was saved. Lightning drops the record then, so the
    first epoch after the resume would count as the best, and ``best`` would name a file in the old place."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and saved != self.dirpath:  # the same files, now in this run's checkpoints/
            here = Path(self.dirpath)

            def moved(path: str | None) -> str | None:
                return str(here / Path(path).name) if path else path

            state_dict = {**state_dict, "dirpath": self.dirpath,
                          **{k: moved(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                    "last_model_path")},
                          "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}}
        super().load_state_dict(state_dict)

