"""What every entry point shares: one-line errors, exit statuses, the argument parsers' error format.

Exit statuses: 0 done; 1 a problem with the inputs (data, checkpoint, config, images, run), reported as
``<prog>: error: <what is wrong and how to fix it>``; 2 a usage error (a bad option), the same one line plus a
pointer to ``--help``; 130 interrupted (Ctrl-C); 141 its output's reader stopped reading (``... | head``); 143
stopped by SIGTERM (as a shell reports these; ``fit`` leaves a checkpoint to resume from).
``python -m fashion_cnn.data_files`` also exits 3 when no copy of the dataset exists, so ``make data`` knows to
fetch one.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NoReturn

import fashion_cnn
from fashion_cnn.errors import FashionCNNError, one_line

BAD_INPUT, USAGE, INTERRUPTED, BROKEN_PIPE, TERMINATED = 1, 2, 130, 141, 143


class CommandError(FashionCNNError):
    """A command's own one-line error (e.g. a run without event files, an unwritable output directory)."""


class OneLineUsage:
    """Parser mixin (argparse or jsonargparse): a usage error is one line plus a pointer to ``--help``, instead of
    the whole usage text or jsonargparse's multi-line explanation."""

    prog: str

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        lines = [" ".join(line.split()) for line in str(message).splitlines() if line.strip()]
        summary = " ".join(lines[:2])  # jsonargparse puts the key on the first line and the reason on the second
        summary += next((f" ({line})" for line in lines[2:] if line.startswith("Given value:")), "")
        sys.stderr.write(f"{self.prog}: error: {summary}\n  (see `{self.prog} --help`)\n")
        raise SystemExit(USAGE)


class ArgumentParser(OneLineUsage, argparse.ArgumentParser):
    """argparse with the project's one-line usage errors."""


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, unless its help already says it, or it has none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser(prog: str, description: str) -> ArgumentParser:
    """A command's argument parser; ``prog``: how it is run (``python -m fashion_cnn.<module>``)."""
    return ArgumentParser(prog=prog, description=description, formatter_class=DefaultsHelp)


def positive(text: str) -> int:
    """An argparse type: a positive integer (``--workers 0`` is a usage error)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def cannot_write(place: object, err: OSError, option: str) -> CommandError:
    """The one-line error for outputs that could not be written: where, why, and the option that picks another place."""
    return CommandError(f"cannot write to {place} ({err.strerror or err}); choose a writable {option}")


def check_writable(log_root: Path, option: str) -> None:
    """Fail before any work if runs cannot be written (rather than after an epoch of training); ``option``: the
    caller's option that chooses the place."""
    existing = next((p for p in (log_root, *log_root.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"cannot write runs to {log_root}: {existing} is not a writable directory; "
                           f"choose another place with {option} DIR")


def missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: what making ``path`` would create."""
    return [d for d in (path, *path.parents) if not d.exists()]


def remove_empty(dirs: Iterable[Path | None]) -> None:
    """Remove each of ``dirs``, in order, that is still an empty directory: what a command that failed had made."""
    for directory in dirs:
        if directory is not None and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def hide_library_noise() -> None:
    """Hide what Lightning 2.6 prints on every fit and test that a user of this project cannot act on, above every
    run's output: a warning about its own use of a torch API, and its advertisement for a cloud logger."""
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`isinstance\(treespec, LeafSpec\)`")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_an_advert not in rank_zero.filters:
        rank_zero.addFilter(_not_an_advert)


def _not_an_advert(record: logging.LogRecord) -> bool:
    """A logging filter: False for Lightning's "Tip: ... try installing litlogger" line, the one line its
    ``configure_logger`` logs (known by where it comes from, not by its wording)."""
    return (record.module, record.funcName, record.levelno) != ("logger_connector", "configure_logger", logging.INFO)


def escape(err: UnicodeError) -> tuple[str, int]:
    """A codec error handler (``errors="fashion_cnn.escape"``): what an output stream cannot encode as backslash
    escapes, and a byte of a file name that is no text in the file system's encoding (Python reads it as a lone
    surrogate) as that byte, ``\\xe9``."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else c.encode("ascii", "backslashreplace").decode("ascii")
                   for c in err.object[err.start:err.end]), err.end


codecs.register_error("fashion_cnn.escape", escape)


@contextlib.contextmanager
def escaped_output() -> Iterator[None]:
    """stdout and stderr escape what they cannot encode (a Latin-1 file name under a UTF-8 locale, say), instead of
    ending the command with UnicodeEncodeError after its work is done: every path a command prints passes here."""
    streams = [s for s in (sys.stdout, sys.stderr) if isinstance(s, io.TextIOWrapper)]
    before = [s.errors for s in streams]
    for stream in streams:
        stream.reconfigure(errors="fashion_cnn.escape")
    try:
        yield
    finally:
        for stream, errors in zip(streams, before, strict=True):
            with contextlib.suppress(ValueError, OSError):  # closed meanwhile, or its reader has gone (a flush)
                stream.reconfigure(errors=errors)


def run(prog: str, body: Callable[[], int]) -> int:
    """Call ``body`` and return its exit status; any :class:`FashionCNNError` (or a file the user may not read or
    write) becomes one line ``prog: error: ...`` on stderr and status 1, and Ctrl-C one line and status 130."""
    hide_library_noise()
    if signal.getsignal(signal.SIGINT) is fashion_cnn._interrupted_while_starting:  # Ctrl-C is handled here now
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with escaped_output():
        return _run(prog, body)


def _run(prog: str, body: Callable[[], int]) -> int:
    """:func:`run`'s work: ``body``'s exit status, or that of what stopped it, reported in one line."""
    try:
        return body()
    except FashionCNNError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return BAD_INPUT
    except PermissionError as err:  # anywhere a path is looked at: Path.exists() itself raises it
        print(f"{prog}: error: {err.filename or 'a file'}: permission denied; run as a user who may use it, or "
              f"choose another path", file=sys.stderr)
        return BAD_INPUT
    except BrokenPipeError:
        try:  # is it stdout's reader that left (`... | head`)? Then stop quietly, as Unix tools do. (A write
            print(flush=True)  # that failed leaves nothing to flush: only a new one can tell)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else Python's final flush fails again
            return BROKEN_PIPE
        raise  # another pipe (a worker process's, say): a bug to see
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """``--ckpt_path`` and ``--logs_dir``, as every command that reads a checkpoint takes them."""
    p.add_argument("--ckpt_path", required=True,
                   help="a .ckpt file, or best/last: that checkpoint of the newest run in --logs_dir")
    p.add_argument("--logs_dir", default="lightning_logs", help="where best/last look for the newest run")
