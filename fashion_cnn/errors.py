"""The base of the project's own errors: :func:`fashion_cnn.commands.run` reports any of them as one line."""

import re


class FashionCNNError(Exception):
    """An error a user can fix: its message is one line that says what is wrong and how to fix it.

    Subclasses name where it comes from (:class:`~fashion_cnn.data_files.DataError`,
    :class:`~fashion_cnn.checkpoints.CheckpointError`, ...); every command turns any of them into
    ``python -m fashion_cnn.<command>: error: <message>`` and exit status 1, never a traceback.
    """


class OptionsError(FashionCNNError):
    """Options that parse but cannot run together (``data.erase`` without ``data.augment``, say): the same options are
    refused wherever they run, so a study records a trial refused this way instead of queueing it again."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's first non-blank line, its whitespace collapsed and cut to ``limit`` characters (its type's name
    when it has no message): the part of a library's error worth quoting inside a one-line message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # terminal colours, which torch.onnx puts in its messages
    line = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
    return " ".join(line.split())[:limit]


def one_line(text: object) -> str:
    """``text`` (an exception, say) with its lines and runs of whitespace joined by single spaces: a multi-line
    library message quoted whole inside a one-line error."""
    return " ".join(str(text).split())
