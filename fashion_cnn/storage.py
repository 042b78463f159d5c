"""Opening an Optuna storage: a study's SQLite file, a database server (PostgreSQL, MySQL) or a journal file."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from sqlalchemy import event

from fashion_cnn.errors import FashionCNNError, first_line


class StorageError(FashionCNNError):
    """A storage that cannot be opened or reached."""


def open_storage(url: str, heartbeat: int | None = None) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; a problem reaching it is one line, before any work. ``heartbeat``: the
    seconds between a running trial's heartbeats, for a storage that runs trials (None: one that reads them)."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable enough
    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            if not path.parent.is_dir():
                raise OSError(f"{path.parent} is not a directory (make it first)")
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        sqlite = url.startswith("sqlite")
        beats = {} if heartbeat is None else {
            "heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=3)}
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None, **beats)
        if sqlite:
            _serialize_sqlite(storage.engine)
        return storage
    except Exception as err:
        raise StorageError(f"cannot reach the storage {url}: {first_line(err)}") from None


def _serialize_sqlite(engine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE``. Python's sqlite3 driver runs a transaction's reads
    before its ``BEGIN``, so two processes could both read a waiting trial and both start it; with the write lock
    taken first, the second sees the first's update (SQLAlchemy's documented fix)."""

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, connection_record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners: replaced by ones that have them
