"""One error path: every error the project raises for a user shares one base, and every command reports it alike."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import pkgutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fashion_cnn
from fashion_cnn import commands
from fashion_cnn.errors import FashionCNNError


def project_modules():
    return [importlib.import_module(f"fashion_cnn.{m.name}") for m in pkgutil.iter_modules(fashion_cnn.__path__)]


def test_every_error_class_of_the_project_has_the_one_base():
    errors = {cls for module in project_modules() for _, cls in inspect.getmembers(module, inspect.isclass)
              if issubclass(cls, Exception) and cls.__module__.startswith("fashion_cnn")}
    assert {"DataError", "CheckpointError", "CommandError", "ConfigError", "TrainingDiverged"} <= {
        cls.__name__ for cls in errors}
    assert all(issubclass(cls, FashionCNNError) for cls in errors), errors


def test_run_turns_a_project_error_into_one_line_and_status_1(capsys):
    def body() -> int:
        raise commands.CommandError("something is wrong\n  across lines; fix it like this")

    assert commands.run("python -m fashion_cnn.x", body) == commands.BAD_INPUT
    err = capsys.readouterr().err
    assert err == "python -m fashion_cnn.x: error: something is wrong across lines; fix it like this\n"


def test_a_path_the_user_may_not_use_is_one_line(capsys):
    def body() -> int:  # what Path.exists() raises under a directory the user may not enter (root may enter all)
        raise PermissionError(13, "Permission denied", "/srv/data/FashionMNIST")

    assert commands.run("python -m fashion_cnn.x", body) == commands.BAD_INPUT
    assert capsys.readouterr().err == ("python -m fashion_cnn.x: error: /srv/data/FashionMNIST: permission denied; "
                                       "run as a user who may use it, or choose another path\n")


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path):
    # `python -m fashion_cnn.predict ... | head -1`: the output outgrows the pipe, and its reader has gone
    code = ("import sys; from fashion_cnn import commands; "
            "sys.exit(commands.run('x', lambda: [print('y' * 99) for _ in range(10_000)] and 0))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).parent.parent)
    assert proc.stdout.readline() == b"y" * 99 + b"\n"
    proc.stdout.close()
    assert proc.wait(timeout=60) == commands.BROKEN_PIPE and proc.stderr.read() == b""


@pytest.mark.parametrize(("command", "args"), [
    ("evaluate", ["--ckpt_path", "{ckpt}", "--data_dir", "{fixture}", "--out_dir", "{blocked}/out"]),
    ("export", ["--ckpt_path", "{ckpt}", "--formats", "torchscript", "--out_dir", "{blocked}/out"]),
    ("report", ["--run", "{run}", "--out", "{blocked}/curves.png"]),
    ("compare", ["{run}", "--out", "{blocked}/out"]),
])
def test_an_output_place_that_cannot_be_written_is_one_line(command, args, trained_run, tmp_path, capsys):
    from tests.helpers import FIXTURE, best_checkpoint, tree_digest

    blocked = tmp_path / "a_file"  # where a directory should be made
    blocked.write_text("mine")
    names = {"ckpt": best_checkpoint(trained_run), "fixture": FIXTURE, "blocked": blocked, "run": trained_run}
    before = tree_digest(trained_run)
    assert importlib.import_module(f"fashion_cnn.{command}").main([a.format(**names) for a in args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"python -m fashion_cnn.{command}: error: cannot write to {blocked}/"), err
    assert err.count("\n") == 1
    assert "choose a writable --out" in err and blocked.read_text() == "mine" and tree_digest(trained_run) == before


def test_a_broken_pipe_that_is_not_stdouts_is_not_hidden(capsys):
    def body() -> int:  # a worker process's pipe, say, while the reader of stdout is still there
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        commands.run("python -m fashion_cnn.x", body)


def test_other_exceptions_are_bugs_and_are_not_hidden():
    def body() -> int:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        commands.run("python -m fashion_cnn.x", body)


@pytest.mark.parametrize("module", ["data_files", "evaluate", "predict", "export", "report", "fit", "study", "compare"])
def test_every_command_reports_a_usage_error_in_the_same_one_line_format(module, capsys):
    main = importlib.import_module(f"fashion_cnn.{module}").main
    with pytest.raises(SystemExit) as exit_:
        main(["--no_such_option", "1"])
    assert exit_.value.code == commands.USAGE
    err = capsys.readouterr().err
    prog = f"python -m fashion_cnn.{module}"
    assert err.startswith(f"{prog}: error: ") and err.endswith(f"\n  (see `{prog} --help`)\n"), err
    assert err.count("\n") == 2 and "usage:" not in err


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "study", "compare", "report", "data_files"])
def test_help_states_each_default_once_and_no_empty_ones(command, capsys):
    with pytest.raises(SystemExit):
        importlib.import_module(f"fashion_cnn.{command}").main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    options = text.split(" -")[1:]
    assert "(default: None)" not in text and "(default: False)" not in text
    assert all(option.count("default") <= 1 for option in options), [o for o in options if o.count("default") > 1]


def test_what_an_output_cannot_encode_is_printed_escaped(capsys):
    name = os.fsdecode(b"/data/caf\xe9.png")  # a Latin-1 file name under a UTF-8 file system encoding

    def body() -> int:  # capsys' streams are strict UTF-8, as stdout is under PYTHONIOENCODING=utf-8
        print(f"{name}: Bag 91.0%")
        raise commands.CommandError(f"{name}: an empty file (0 bytes): copy or save the image again")

    assert commands.run("python -m fashion_cnn.x", body) == commands.BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "/data/caf\\xe9.png: Bag 91.0%\n"
    assert err == ("python -m fashion_cnn.x: error: /data/caf\\xe9.png: an empty file (0 bytes): copy or save the "
                   "image again\n")
    with pytest.raises(UnicodeEncodeError):  # once the command is done, the streams are as they were
        sys.stdout.write(name)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="watches /proc/<pid>/maps (Linux)")
@pytest.mark.parametrize("command", ["fit", "evaluate", "predict", "export", "report", "compare", "study",
                                     "data_files"])
def test_ctrl_c_while_a_command_imports_torch_is_one_line_and_status_130(command):
    proc = subprocess.Popen([sys.executable, "-m", f"fashion_cnn.{command}", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 60
        # torch's libraries mapped into the process: it is importing torch, the first of its slow imports
        while "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "it never started importing torch"
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, out, err.decode()) == (130, b"", f"python -m fashion_cnn.{command}: interrupted\n")


def test_lightnings_advert_is_hidden_and_its_other_lines_are_kept(caplog):
    import lightning as L

    commands.hide_library_noise()
    with caplog.at_level(logging.INFO):
        L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    said = [r.getMessage() for r in caplog.records]
    assert any("GPU available" in line for line in said) and not any("litlogger" in line for line in said), said
