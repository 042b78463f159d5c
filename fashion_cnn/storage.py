"""Opening an Optuna storage: a study's SQLite file, a database server (PostgreSQL, MySQL) or a journal file.

A server's password never needs a command line, where ``ps``, shell history and SLURM's job records keep it: give
the URL in ``$FASHION_CNN_STORAGE``, or leave the password out of it for libpq to read (``PGPASSWORD``,
``~/.pgpass``). Every message shows a URL with its password masked (:func:`shown`).
"""

from __future__ import annotations

import os
import random
import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from sqlalchemy import event, exc
from sqlalchemy.engine import make_url

from fashion_cnn.errors import FashionCNNError, first_line

STORAGE_ENV = "FASHION_CNN_STORAGE"  # the storage URL, when not given with --storage
CREATE_TRIES = 5  # workers started together on an empty database each create Optuna's tables: all but one collide


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
        _check_driver(url)
        sqlite = url.startswith("sqlite")
        beats = {} if heartbeat is None else {
            "heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=3)}
        # another worker created the same table meanwhile (SQLite says so as an OperationalError)
        collided = (exc.IntegrityError, exc.ProgrammingError, *((exc.OperationalError,) if sqlite else ()))
        for attempt in range(CREATE_TRIES):
            try:
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None, **beats)
                break
            except collided:
                if attempt == CREATE_TRIES - 1:
                    raise
                time.sleep(random.uniform(0.1, 0.5) * (attempt + 1))
        if sqlite:
            _serialize_sqlite(storage.engine)
        return storage
    except StorageError:
        raise
    except Exception as err:
        raise StorageError(f"cannot reach the storage {shown(url)}: {first_line(err)}") from None


def storage_url(given: str | None, default: str) -> str:
    """The storage a command uses: ``--storage``'s, else ``$FASHION_CNN_STORAGE``'s, else ``default``."""
    return given or os.environ.get(STORAGE_ENV) or default


def shown(url: str) -> str:
    """``url`` as a message or a log shows it: with its password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:  # not a URL SQLAlchemy reads (a journal file's): mask what looks like a password
        return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


def _check_driver(url: str) -> None:
    """Refuse a database URL whose driver is not installed (psycopg for ``postgresql://``), saying how to get it."""
    try:
        make_url(url).get_dialect().import_dbapi()
    except ImportError as err:
        extra = " (pip install -e '.[postgres]')" if url.startswith("postgresql") else ""
        raise StorageError(f"cannot reach the storage {shown(url)}: its database driver, {err.name}, is not "
                           f"installed; install it{extra}") from None


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
