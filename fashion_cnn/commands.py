"""What the ``evaluate``/``predict``/``export``/``report`` commands share: one-line errors and exit statuses (and,
with ``fit``, the hiding of a library warning no user can act on).

Exit statuses: 0 success, 1 a problem with the inputs (checkpoint, data, images, run), 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from fashion_cnn.checkpoints import CheckpointError
from fashion_cnn.data_files import DataError


class CommandError(RuntimeError):
    """A command's own one-line error (e.g. a run without event files)."""


# The project's errors: each message already says what is wrong and how to fix it.
EXPECTED = (CheckpointError, DataError, CommandError)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line plus a pointer to --help, as ``python -m fashion_cnn.fit`` does."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n  (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def parser(module: str, description: str) -> OneLineParser:
    """The argument parser of ``python -m fashion_cnn.<module>``."""
    return OneLineParser(prog=f"python -m fashion_cnn.{module}", description=description,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def hide_library_noise() -> None:
    """Hide a warning Lightning 2.6 raises about its own use of a torch API (on every fit and test): nothing a user
    of this project can act on, and it would be printed above every run's output."""
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`isinstance\(treespec, LeafSpec\)`")


def run(prog: str, body: Callable[[], int]) -> int:
    """Call ``body``; report the project's errors as ``prog: error: ...`` on one line with exit status 1."""
    hide_library_noise()
    try:
        return body()
    except EXPECTED as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """``--ckpt_path`` and ``--logs_dir``, as every command that reads a checkpoint takes them."""
    p.add_argument("--ckpt_path", required=True,
                   help="a .ckpt file, or best/last: that checkpoint of the newest run in --logs_dir")
    p.add_argument("--logs_dir", default="lightning_logs", help="where best/last look for the newest run")
