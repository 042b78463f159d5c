"""fashion_cnn: a fast, reproducible PyTorch Lightning experiment on FashionMNIST."""

import signal
import sys

__version__ = "0.1.0"


def _starting_command() -> str | None:
    """The module ``python -m`` is starting, while that imports this package (``sys.argv[0]`` is ``-m`` until the
    module itself runs); None on any other import (from Python, a test, another program)."""
    argv = getattr(sys, "orig_argv", [])
    return argv[argv.index("-m") + 1] if sys.argv[:1] == ["-m"] and "-m" in argv[:-1] else None


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """SIGINT before the command runs: its one line and exit status, as :func:`fashion_cnn.commands.run` gives."""
    sys.stderr.write(f"python -m {_COMMAND}: interrupted\n")
    raise SystemExit(130)


_COMMAND = _starting_command()
# Ctrl-C while a command imports torch and Lightning (its first seconds) would end in a traceback from inside them;
# until commands.run takes Ctrl-C over (it puts Python's own handler back), it ends as a later Ctrl-C does. (Where
# SIGINT is ignored, as in a shell's background job, it stays ignored.)
if (_COMMAND or "").startswith(f"{__name__}.") and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)
