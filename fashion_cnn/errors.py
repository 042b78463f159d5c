"""The base of the project's own errors: :func:`fashion_cnn.commands.run` reports any of them as one line."""


class FashionCNNError(Exception):
    """An error a user can fix: its message is one line that says what is wrong and how to fix it.

    Subclasses name where it comes from (:class:`~fashion_cnn.data_files.DataError`,
    :class:`~fashion_cnn.checkpoints.CheckpointError`, ...); every command turns any of them into
    ``python -m fashion_cnn.<command>: error: <message>`` and exit status 1, never a traceback.
    """
