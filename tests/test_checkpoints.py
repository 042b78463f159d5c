"""Finding and loading checkpoints (the one place evaluate/predict/export get a model from), and what each of
those commands says about a checkpoint it cannot use: one line, exit status 1, nothing run from the file."""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from fashion_cnn import evaluate, export, predict
from fashion_cnn.checkpoints import load, resolve, unsafe_globals
from fashion_cnn.data_files import MEAN, STD
from fashion_cnn.runs import RunError, run_dir_of
from tests.helpers import SMALL, best_checkpoint

COMMANDS = {"evaluate": evaluate.main, "predict": predict.main, "export": export.main}


class _MakesAFile:
    """Unpickling this creates a file: what a hostile checkpoint could do (or anything worse)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class _Calls:
    """Unpickling this calls ``func(*args)``: the function a hostile checkpoint asks for."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Unknown:
    """A class no allowlist holds: unpickling it (its ``__setstate__``) creates the marker."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = str(marker)

    def __setstate__(self, state: dict) -> None:
        pathlib.Path(state["marker"]).touch()


# what each forgery asks for, and how it makes the marker file when it is unpickled without restrictions
HOSTILE = {
    "blocked module": (f"{os.system.__module__}.system", lambda marker: _Calls(os.system, f"touch '{marker}'")),
    "subprocess": ("subprocess.Popen", lambda marker: _Calls(subprocess.Popen, ["touch", str(marker)])),
    "eval": ("builtins.eval", lambda marker: _Calls(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()")),
    "unknown class": (f"{__name__}._Unknown", _Unknown),
}


def _forge(kind: str, how: str, path: pathlib.Path, marker: pathlib.Path) -> None:
    """A checkpoint-like file whose pickle asks for ``HOSTILE[kind]``: written by torch.save (a zip), by torch.save
    in its legacy format, or by pickle.dump (protocol 5: globals named through the stack)."""
    if how == "pickle":  # without tensors, which pickle itself stores through a call torch refuses as well
        with path.open("wb") as f:
            pickle.dump({"state_dict": {}, "payload": HOSTILE[kind][1](marker)}, f, protocol=5)
        return
    content = {"state_dict": {"w": torch.ones(2)}, "payload": HOSTILE[kind][1](marker)}
    torch.save(content, path, _use_new_zipfile_serialization=how == "zip")


def run_command(name: str, ckpt: str, tmp_path: pathlib.Path) -> int:
    image = tmp_path / "image.png"
    Image.new("L", (28, 28)).save(image)
    extra = {"evaluate": ["--out_dir", str(tmp_path / "out")], "predict": [str(image)],
             "export": ["--out_dir", str(tmp_path / "out")]}[name]
    return COMMANDS[name](["--ckpt_path", ckpt, "--logs_dir", str(tmp_path / "logs"), *extra])


def assert_one_line_error(capsys, command: str, *words: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith(f"python -m fashion_cnn.{command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(w in err for w in words), err


def test_best_and_last_are_those_of_the_newest_run_with_checkpoints(trained_run, tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(trained_run, logs / "version_2")
    (logs / "version_10").mkdir()  # newer, but died before its first checkpoint
    (logs / "version_1" / "checkpoints").mkdir(parents=True)
    (logs / "version_1" / "checkpoints" / "last.ckpt").write_bytes(b"an older run")
    assert resolve("last", logs) == logs / "version_2" / "checkpoints" / "last.ckpt"
    # No validation split: the run kept only last.ckpt, which is the checkpoint it reported.
    assert resolve("best", logs) == logs / "version_2" / "checkpoints" / "last.ckpt"
    assert run_dir_of(resolve("best", logs)) == logs / "version_2"
    loaded = load("best", logs)
    assert loaded.run_dir == logs / "version_2" and not loaded.net.training
    assert (loaded.mean, loaded.std) == (MEAN, STD)
    with pytest.raises(RunError, match="no run in"):
        resolve("best", tmp_path / "empty")


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_checkpoint(command, tmp_path, capsys):
    assert run_command(command, str(tmp_path / "nope.ckpt"), tmp_path) == 1
    assert_one_line_error(capsys, command, "nope.ckpt does not exist")
    assert run_command(command, "best", tmp_path) == 1
    assert_one_line_error(capsys, command, "no run in", "make train")


@pytest.mark.parametrize("command", COMMANDS)
def test_truncated_checkpoint(command, trained_run, tmp_path, capsys):
    whole = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole[: len(whole) // 2])
    assert run_command(command, str(cut), tmp_path) == 1
    assert_one_line_error(capsys, command, "cut.ckpt is truncated or not a PyTorch checkpoint", "copy it again")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "content"), [
    ("config.yaml", b"a: 1\n"),  # torch.load fails with an IndexError
    ("notes.txt", b"# not a checkpoint\n"),  # an UnpicklingError, the kind a hostile pickle gets too
    ("picture.png", None),
])
def test_a_file_that_is_no_checkpoint_is_called_so(name, content, tmp_path, capsys):
    other = tmp_path / name
    if content is None:
        Image.new("L", (28, 28)).save(other)
    else:
        other.write_bytes(content)
    before = other.read_bytes()
    assert run_command("evaluate", str(other), tmp_path) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"python -m fashion_cnn.evaluate: error: {other} is ") and err.count("\n") == 1, err
    assert "not a PyTorch checkpoint" in err and "would run code" not in err and other.read_bytes() == before


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.update(hyper_parameters=None), "it lacks hyper_parameters as a mapping"),
    (lambda c: c.update(datamodule_hyper_parameters=[1]), "it lacks datamodule_hyper_parameters as a mapping"),
    (lambda c: c["hyper_parameters"].update(net="fashion_cnn.nets.StrongCNN"), "cannot rebuild fashion_cnn.nets.St"),
])
def test_a_hand_edited_checkpoint_is_one_line(edit, message, trained_run, tmp_path, capsys):
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    assert run_command("evaluate", str(tmp_path / "edited.ckpt"), tmp_path) == 1
    assert_one_line_error(capsys, "evaluate", message)


@pytest.mark.parametrize("command", COMMANDS)
def test_checkpoint_whose_pickle_would_run_code_is_refused_unopened(command, tmp_path, capsys):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _MakesAFile(marker)}, hostile)
    torch.load(hostile, weights_only=False)  # proof that the file is hostile: an unrestricted load runs it
    assert marker.exists()
    os.remove(marker)
    assert run_command(command, str(hostile), tmp_path) == 1
    assert_one_line_error(capsys, command, "would run code", "was not loaded")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle"])
@pytest.mark.parametrize("kind", HOSTILE)
def test_any_hostile_pickle_is_named_with_what_it_asks_for_and_nothing_runs(kind, how, tmp_path, capsys):
    marker, hostile = tmp_path / "pwned", tmp_path / "hostile.ckpt"
    _forge(kind, how, hostile, marker)
    # proof that the file is hostile: an unrestricted load runs it
    loaded = pickle.loads(hostile.read_bytes()) if how == "pickle" else torch.load(hostile, weights_only=False)
    if isinstance(loaded["payload"], subprocess.Popen):
        loaded["payload"].wait()
    assert marker.exists()
    os.remove(marker)
    assert run_command("evaluate", str(hostile), tmp_path) == 1
    assert_one_line_error(capsys, "evaluate", f"{hostile} is not a plain weights checkpoint: its pickle would run "
                          f"code (it asks for {HOSTILE[kind][0]}), so it was not loaded")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_hostile_pickle_is_told_from_what_torch_finds_in_it_not_from_its_message(tmp_path, capsys, monkeypatch):
    hostile = tmp_path / "hostile.ckpt"
    _forge("blocked module", "zip", hostile, tmp_path / "pwned")

    def load(*args, **kwargs):  # however a torch version words its refusal
        raise pickle.UnpicklingError("Weights only load failed: something it had never said before")

    monkeypatch.setattr(torch, "load", load)
    assert run_command("evaluate", str(hostile), tmp_path) == 1
    assert_one_line_error(capsys, "evaluate", "would run code", f"(it asks for {os.system.__module__}.system)")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("how", ["zip", "legacy"])
def test_what_torch_loads_by_default_is_no_hostile_global(how, trained_run, tmp_path):
    # a Lightning checkpoint names torch's tensor rebuilders and OrderedDict: torch's weights-only loader allows them
    checkpoint = torch.load(best_checkpoint(trained_run), weights_only=True)
    saved = tmp_path / "saved.ckpt"
    torch.save(checkpoint, saved, _use_new_zipfile_serialization=how == "zip")
    assert unsafe_globals(best_checkpoint(trained_run)) == [] and unsafe_globals(saved) == []
    assert load(saved).net is not None


@pytest.mark.parametrize("command", COMMANDS)
def test_an_exported_torchscript_model_is_named_as_such(command, tmp_path, capsys):
    exported = tmp_path / "last.torchscript.pt"  # what export writes, given where a .ckpt is asked for
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(exported))
    assert run_command(command, str(exported), tmp_path) == 1
    assert_one_line_error(capsys, command, "is an exported TorchScript model, not a training checkpoint")


def test_a_checkpoint_of_something_else(tmp_path, capsys):
    other = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, other)
    assert run_command("evaluate", str(other), tmp_path) == 1
    assert_one_line_error(capsys, "evaluate", "not a fashion_cnn.fit checkpoint", "state_dict")


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path):
    from fashion_cnn.checkpoints import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(Exception, match=r"lambda|pickle"):  # fails while writing: a lambda cannot be pickled
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "oops": lambda: 0}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no partial file left behind
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))


def test_a_save_clears_what_a_process_killed_mid_save_left_and_nothing_of_a_running_one(tmp_path):
    from fashion_cnn.checkpoints import AtomicCheckpointIO

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a pid no process has any more
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / f".last.ckpt.partial-{gone}").write_bytes(b"half a checkpoint")  # its save was killed (kill -9)
    (checkpoints / f".last.ckpt.partial-{os.getppid()}").write_bytes(b"being written")  # a process still at it
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, checkpoints / "last.ckpt")
    assert sorted(p.name for p in checkpoints.iterdir()) == [f".last.ckpt.partial-{os.getppid()}", "last.ckpt"]


def test_resuming_training_from_a_hostile_checkpoint_runs_nothing(tmp_path, capsys, monkeypatch):
    from fashion_cnn import fit

    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _MakesAFile(marker)}, hostile)
    monkeypatch.chdir(tmp_path)
    assert fit.main([*SMALL, "--ckpt_path", str(hostile)]) == 1
    err = capsys.readouterr().err
    assert "would run code" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("class_path", ["os.system", "subprocess.Popen", "fashion_cnn.nets.NoSuchNet"])
def test_a_checkpoint_can_only_name_a_network_class(class_path, trained_run, tmp_path, capsys, monkeypatch):
    checkpoint = torch.load(best_checkpoint(trained_run), weights_only=True)
    args = {"args": ["touch", "pwned"]} if class_path == "subprocess.Popen" else {"command": "touch pwned"}
    checkpoint["hyper_parameters"]["net"] = {"class_path": class_path, "init_args": args}
    forged = tmp_path / "forged.ckpt"
    torch.save(checkpoint, forged)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    assert run_command("export", str(forged), tmp_path) == 1
    # refused for what it is, before it is called (Popen with these arguments would have run)
    said = "has no attribute" if class_path.endswith("NoSuchNet") else "is not a torch.nn.Module"
    assert_one_line_error(capsys, "export", f"cannot rebuild {class_path}", said)
    assert list(workdir.iterdir()) == [] and not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_a_checkpoint_with_other_weights_than_its_network_is_one_line(trained_run, tmp_path, capsys):
    checkpoint = torch.load(best_checkpoint(trained_run), weights_only=True)
    checkpoint["hyper_parameters"]["net"] = {"class_path": "fashion_cnn.nets.StrongCNN", "init_args": {}}
    mismatched = tmp_path / "mismatched.ckpt"
    torch.save(checkpoint, mismatched)
    assert run_command("evaluate", str(mismatched), tmp_path) == 1
    assert_one_line_error(capsys, "evaluate", "cannot rebuild fashion_cnn.nets.StrongCNN", "state_dict")


def test_best_is_the_newest_best_checkpoint_when_a_validation_split_picked_one(trained_run, tmp_path):
    logs = tmp_path / "logs"
    checkpoints = logs / "version_0" / "checkpoints"
    shutil.copytree(trained_run, logs / "version_0")
    older, newer = checkpoints / "best-epoch00-val_acc0.5000.ckpt", checkpoints / "best-epoch02-val_acc0.6000.ckpt"
    for i, path in enumerate((older, newer)):  # a resumed run can leave an older best beside the current one
        shutil.copy(checkpoints / "last.ckpt", path)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    assert resolve("best", logs) == newer and resolve("last", logs) == checkpoints / "last.ckpt"
