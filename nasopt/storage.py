"""Opening Optuna storages safely: checked URLs, masked passwords, heartbeats and retry.

Nothing is created on disk until every check passed, so a mistyped URL or a file that is not a
database leaves the disk as it was.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from nasopt.errors import UserError

__all__ = ["DEFAULT_STORAGE", "open_storage", "close_storage", "fast_sqlite", "mask_url", "sqlite_path",
           "set_user_attrs"]

DEFAULT_STORAGE = "sqlite:///nasopt.db"
HEARTBEAT_INTERVAL = 2  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20  # a RUNNING trial without a heartbeat for this long is failed and retried
MAX_RETRY = 3

_SCHEMES = ("sqlite", "postgresql", "mysql")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def sqlite_path(url: str) -> Path | None:
    """The file of an `sqlite:///FILE` URL (None for other schemes or in-memory databases)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def _check_sqlite_file(path: Path, url: str) -> None:
    if path.is_dir():
        raise UserError(f"storage {url} points to a directory; give a file, e.g. sqlite:///{path / 'nasopt.db'}")
    if not path.parent.exists():
        raise UserError(f"cannot open storage {url}: folder {path.parent} does not exist; create it or "
                        "choose another path")
    if path.exists():
        try:
            with open(path, "rb") as f:
                header = f.read(16)
        except OSError as e:
            raise UserError(f"cannot read storage file {path}: {e.strerror}; check its permissions") from None
        if header and header != b"SQLite format 3\x00":
            raise UserError(f"{path} is not an SQLite database; point --storage at an nasopt/Optuna "
                            "database or a new file name")
    elif not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot create storage file {path}: folder not writable; choose another --storage")


def fast_sqlite(storage: object) -> None:
    """WAL journal + synchronous=NORMAL during a run: a commit costs ~1 ms instead of ~2-20 ms (no fsync
    per commit), and the database is never corrupted by a crash (at worst the last commits are lost on
    power loss). `close_storage` checkpoints and returns the file to the rollback journal, so no
    -wal/-shm files remain after a run; a killed run leaves them, and the next command that opens the
    database folds them back in (SQLite's own recovery)."""
    from sqlalchemy import event

    if not isinstance(storage, RDBStorage) or not str(storage.engine.url).startswith("sqlite"):
        return

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_connection: object, _record: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    storage._nasopt_pragmas = _pragmas  # type: ignore[attr-defined]  # removed again by close_storage

    storage.engine.dispose()  # connections opened during set-up reconnect with the pragmas


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """`trial.set_user_attr` for several keys in ONE transaction on an RDB storage (one commit instead
    of one per key: most of a short trial's storage time). Other storages, or an Optuna whose private
    RDB helpers changed, get the public per-key calls."""
    backend = getattr(trial.storage, "_backend", trial.storage)
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    if isinstance(backend, RDBStorage) and write is not None and len(attrs) > 1:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(backend.scoped_session) as session:
            for key, value in attrs.items():
                write(session, models.TrialUserAttributeModel, trial._trial_id, key, value)
        trial._cached_frozen_trial.user_attrs.update(attrs)
        return
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def close_storage(storage: object) -> None:
    """Close pooled connections; an SQLite file goes back to its ordinary rollback journal, so later
    reading commands (ls, show, pandas) open it without creating -wal/-shm files beside it."""
    storage = getattr(storage, "_backend", storage)  # a study's storage is Optuna's cache around the RDB one
    engine = getattr(storage, "engine", None)
    if engine is None:
        return
    if str(engine.url).startswith("sqlite"):
        from sqlalchemy import event

        listener = getattr(storage, "_nasopt_pragmas", None)
        if listener is not None and event.contains(engine, "connect", listener):
            event.remove(engine, "connect", listener)
        engine.dispose()
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                connection.exec_driver_sql("PRAGMA journal_mode=DELETE")
        except Exception:  # another process (a second worker, the dashboard) still has it open: keep WAL
            pass
    engine.dispose()


def open_storage(url: str | None = None, *, create: bool = True, heartbeat: bool = True) -> RDBStorage:
    """Open (and with `create`, initialise) the storage at `url` with heartbeat and stale-trial retry.

    Raises `UserError` with the password masked when the URL cannot be used. With `create=False`
    a missing SQLite file is an error instead of a new, empty database.
    """
    url = url or DEFAULT_STORAGE
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if "://" not in url or scheme not in _SCHEMES:
        raise UserError(f"storage URL {mask_url(url)!r} is not supported; use sqlite:///FILE.db, "
                        "postgresql://USER@HOST/DB or mysql://USER@HOST/DB")
    path = sqlite_path(url)
    if path is not None:
        _check_sqlite_file(path, url)
        if not create and not path.exists():
            raise UserError(f"no storage at {path}; run a study first (nasopt run FILE) or pass --storage")
    engine_kwargs: dict[str, object] = {}
    if scheme == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs: dict[str, object] = {}
            if heartbeat:
                kwargs = dict(heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)  # type: ignore[arg-type]
    except UserError:
        raise
    except Exception as e:  # driver missing, server down, corrupt file: one line, password masked
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Failed to import DB access module" in first:
            first = "its database driver is not installed; pip install 'nasopt[postgres]' (psycopg)"
        raise UserError(f"cannot open storage {mask_url(url)}: {mask_url(first)}") from None
