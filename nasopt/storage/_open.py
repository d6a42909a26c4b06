"""Opening Optuna storages safely: checked URLs, masked passwords, heartbeats, retry through outages.

Three kinds of storage, by URL:

- `sqlite:///FILE.db`: one process on one machine (the default, `sqlite:///nasopt.db`).
- `journal:///FILE.log`: Optuna's journal file; several processes on one machine, no server.
- `postgresql://USER@HOST/DB` (or `mysql://`): any number of workers on any number of machines.

Nothing is created or changed until every check passed: a mistyped URL or one without a file name, a
file that is not a database or journal, a read-only file or folder, another application's database
(its tables and none of Optuna's), an unreachable server, wrong credentials or a schema written by
another Optuna version leave everything as it was. Processes that start together on an empty database
create its tables one at a time (an advisory lock, a named lock, a lock on an SQLite file's folder). Passwords never appear in a message: every error text goes
through `scrub`. On a database server, an established worker rides out a short outage (a restart, a
fail-over): each storage call is retried with back-off for up to `OUTAGE_TIMEOUT` seconds.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage

from nasopt.errors import UserError
from nasopt.storage._outage import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    ResilientRDBStorage,
    first_line,
    sqlite_user_error,
)
from nasopt.storage._retry import StampedJournalStorage, retry_callback
from nasopt.storage._schema import foreign_error, schema_error, schema_lock, schema_state
from nasopt.storage._urls import (
    DEFAULT_STORAGE,
    folder_of,
    journal_path,
    mask_url,
    scrub,
    sqlite_path,
    url_scheme,
)

__all__ = ["open_storage", "close_storage", "fast_sqlite", "set_user_attrs", "on_close"]

CONNECT_TIMEOUT = 10  # seconds to wait for a database server to answer a new connection
PING_IDLE = 1.0  # seconds a pooled connection may sit idle before it is pinged on checkout

_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")
_JOURNAL_HEAD = b'{"op_code":'  # every line of an Optuna journal starts like this


# -- files -----------------------------------------------------------------------------------------

def _check_file(path: Path, url: str, kind: str, create: bool) -> None:
    scheme = "sqlite" if kind == "sqlite" else "journal"
    if path.is_dir():
        name = "nasopt.db" if kind == "sqlite" else "nasopt.log"
        raise UserError(f"storage {url} points to a directory; give a file, e.g. {scheme}:///{path / name}")
    if not path.parent.exists() and create and not path.is_absolute() and ".." not in path.parts:
        # a new file in a folder below this one (sqlite:///runs/mobile.db): the folder is made for it; an absolute
        # path to a missing folder is more likely a typo than a wish, and is refused below
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create folder {path.parent} for storage {url}: {e.strerror}; create it or "
                            "choose another path") from None
    if not path.parent.exists():
        raise UserError(f"cannot open storage {url}: folder {path.parent} does not exist; create it or "
                        "choose another path")
    if path.exists():
        try:
            with open(path, "rb") as f:
                header = f.read(16)
        except OSError as e:
            raise UserError(f"cannot read storage file {path}: {e.strerror}; check its permissions") from None
        if kind == "sqlite" and header and header != b"SQLite format 3\x00":
            hint = " (it looks like a journal: use journal:///" + str(path) + ")" if header.startswith(_JOURNAL_HEAD) else ""
            raise UserError(f"{path} is not an SQLite database{hint}; point --storage at an nasopt/Optuna "
                            "database or a new file name")
        if kind == "journal" and header and not header.startswith(_JOURNAL_HEAD):
            hint = " (it is an SQLite database: use sqlite:///" + str(path) + ")" if header.startswith(b"SQLite") else ""
            raise UserError(f"{path} is not an Optuna journal file{hint}; point --storage at a journal written by "
                            "nasopt/Optuna or a new file name")
        # os.access, not the mode bits: it also sees a read-only mount and an immutable file (chattr +i), which
        # deny root as well; Optuna opens a journal for appending even to read it
        if (create or kind == "journal") and not os.access(path, os.W_OK):
            raise UserError(f"storage file {path} is read-only; make it writable (chmod u+w {path}) or choose "
                            f"another --storage, e.g. a copy of it: {scheme}:///COPY")
        if create and not os.access(path.parent, os.W_OK):
            beside = "SQLite writes its journal" if kind == "sqlite" else "Optuna writes a lock file"
            raise UserError(f"cannot write storage file {path}: its folder {folder_of(path)} is read-only, and {beside} "
                            "beside the file; make the folder writable or move the file to a writable folder "
                            f"({scheme}:///PATH)")
    elif create and not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot create storage file {path}: folder {folder_of(path)} is not writable; make it "
                        f"writable or choose a file in a writable folder ({scheme}:///PATH)")


def fast_sqlite(storage: object) -> None:
    """WAL journal + synchronous=NORMAL during a run: a commit costs ~1 ms instead of ~2-20 ms (no fsync
    per commit), and the database is never corrupted by a crash (at worst the last commits are lost on
    power loss). `close_storage` checkpoints and returns the file to the rollback journal, so no
    -wal/-shm files remain after a run; a killed run leaves them, and the next command that opens the
    database folds them back in (SQLite's own recovery)."""
    from sqlalchemy import event

    storage = getattr(storage, "_backend", storage)  # Optuna's (or nasopt's buffering) cache around it
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


# -- opening ---------------------------------------------------------------------------------------

def _open_rdb(url: str, heartbeat: bool, create: bool = True, who: str = "") -> RDBStorage:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    scheme = url_scheme(url)
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        if scheme == "postgresql":
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    hb: dict[str, Any] = {}
    if heartbeat:
        hb = dict(heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                  heartbeat_stale_trial_callback=retry_callback())
    probe = sa.create_engine(url, poolclass=NullPool, connect_args=engine_kwargs.get("connect_args", {}))
    try:
        with probe.connect() as connection:  # unreachable server, wrong credentials: fails here
            state, revision, tables = schema_state(connection)
            with contextlib.ExitStack() as held:
                # several processes starting at once on an empty database: one creates the tables (and stamps
                # their version, in a later transaction); the others wait for it and look again
                if state in ("fresh", "other"):
                    connection.commit()
                    held.enter_context(schema_lock(scheme, url, connection))
                    for _ in range(20):  # tables without a version: a plain Optuna client may be stamping it now
                        state, revision, tables = schema_state(connection)
                        connection.commit()
                        if state != "other" or revision is not None:
                            break
                        time.sleep(0.25)
                if state == "foreign":
                    raise foreign_error(url, tables, create)
                if state == "other":
                    raise schema_error(url, revision, tables)
                if state == "fresh" and not create:
                    raise UserError(f"no studies in {mask_url(url)} (no Optuna tables); run a study there first "
                                    "(nasopt run FILE --storage URL) or pass another --storage")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = ResilientRDBStorage(url, who, engine_kwargs=engine_kwargs, skip_compatibility_check=True,
                                                   skip_table_creation=state == "current", **hb)
    finally:
        probe.dispose()
    if scheme != "sqlite":
        _pre_ping_idle(storage.engine)
    return storage


def _pre_ping_idle(engine: Any) -> None:
    """Pre-ping pooled connections that sat idle for more than PING_IDLE seconds: a connection the
    server dropped (a restart, an idle timeout) is replaced before use. SQLAlchemy's `pool_pre_ping`
    pings at every checkout, i.e. one extra round trip per transaction (about 6 per short trial); a
    connection used a moment ago is alive, and if the server went away in between, the outage retry
    around every storage call (`Outage`) replaces it."""
    import sqlalchemy as sa

    def stamp(_dbapi: Any, record: Any, *_: Any) -> None:
        record.info["nasopt_used"] = time.monotonic()

    def checkout(dbapi: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("nasopt_used", 0.0) > PING_IDLE:
            try:
                alive = engine.dialect.do_ping(dbapi)
            except Exception:
                alive = False
            if not alive:
                raise sa.exc.DisconnectionError("connection lost while idle in the pool")  # pool reconnects

    sa.event.listen(engine, "connect", stamp)
    sa.event.listen(engine, "checkin", stamp)
    sa.event.listen(engine, "checkout", checkout)


def _open_journal(url: str, path: Path, create: bool) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    from nasopt.storage._journal import journal_lock

    _check_file(path, url, "journal", create)
    if not create and not path.exists():
        raise UserError(f"no storage at {path}; run a study first (nasopt run FILE) or pass --storage")
    try:  # Optuna's lock file under an flock: a worker killed holding it does not stall the others
        storage = StampedJournalStorage(JournalFileBackend(str(path), lock_obj=journal_lock(str(path))))
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a readable Optuna journal ({type(e).__name__}: {e}); point --storage "
                        "at a journal written by nasopt/Optuna or a new file name") from None
    storage.url = url  # type: ignore[attr-defined]  # for messages and for workers that reopen it
    return storage


def open_storage(url: str | None = None, *, create: bool = True, heartbeat: bool = True, who: str = "") -> Any:
    """Open (and with `create`, initialise) the storage at `url`.

    RDB storages get heartbeats, stale-trial retry, pre-ping pools and outage retry; a journal file
    gets none of these (its workers share one machine, where a dead worker is found by its pid).
    Raises `UserError` with the password masked when the URL cannot be used. With `create=False` a
    missing file is an error instead of a new, empty storage. `who` ("worker 3: ") names the process in
    the messages of a database outage.
    """
    url = url or DEFAULT_STORAGE
    scheme = url_scheme(url)
    if "://" not in url or scheme not in _SCHEMES:
        raise UserError(f"storage URL {mask_url(url)!r} is not supported; use sqlite:///FILE.db, "
                        "journal:///FILE.log, postgresql://USER@HOST/DB or mysql://USER@HOST/DB")
    if scheme == "journal":
        path = journal_path(url)
        if path is None:
            raise UserError(f"storage URL {url!r} names no file; use journal:///FILE.log (relative) or "
                            "journal:////ABSOLUTE/PATH.log")
        return _open_journal(url, path, create)
    sqlite = sqlite_path(url)
    if scheme == "sqlite":
        if sqlite is None:  # sqlite://, sqlite:///, sqlite:///:memory: would keep the study in memory and lose it
            raise UserError(f"storage URL {url!r} names no database file; use sqlite:///nasopt.db (a file in this "
                            "folder) or sqlite:////ABSOLUTE/PATH.db")
        _check_file(sqlite, url, "sqlite", create)
        if not create and not sqlite.exists():
            raise UserError(f"no storage at {sqlite}; run a study first (nasopt run FILE) or pass --storage")
    try:
        return _open_rdb(url, heartbeat, create, who)
    except UserError:
        raise
    except Exception as e:  # driver missing, server down, wrong credentials, corrupt file: one line, masked
        user_error = sqlite_user_error(e, url)
        if user_error is not None:
            raise user_error from None
        first = first_line(e)
        if "Failed to import DB access module" in first or isinstance(e, ModuleNotFoundError):
            first = ("its database driver is not installed; " + ("pip install 'nasopt[mysql]' and use mysql+pymysql://"
                     if scheme == "mysql" else "pip install 'nasopt[postgres]' (psycopg)"))
        raise UserError(f"cannot open storage {mask_url(url)}: {scrub(first, url)}") from None


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """`trial.set_user_attr` for several keys: buffered while the runner holds the trial, else in ONE
    transaction on an RDB storage (one commit instead of one per key). Other storages get the public
    per-key calls."""
    from nasopt.storage._fast._buffer import BufferedStorage

    if isinstance(trial.storage, BufferedStorage) and len(attrs) > 1:
        trial.storage.set_trial_user_attrs(trial._trial_id, dict(attrs))
        trial._cached_frozen_trial.user_attrs.update(attrs)
        return
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def on_close(storage: object, callback: Callable[[], None]) -> None:
    """Call `callback` (once) when `close_storage` closes `storage` (or the RDB storage inside it), before
    its connections go: e.g. a run's claim on its study is given back there (`check_single_process`)."""
    storage = getattr(storage, "_backend", storage)
    storage.__dict__.setdefault("_nasopt_on_close", []).append(callback)


def close_storage(storage: object) -> None:
    """Close pooled connections; an SQLite file goes back to its ordinary rollback journal, so later
    reading commands (ls, show, pandas) open it without creating -wal/-shm files beside it. Callbacks
    registered with `on_close` run first (errors ignored: closing never fails)."""
    storage = getattr(storage, "_backend", storage)  # a study's storage is Optuna's cache around the RDB one
    callbacks = getattr(storage, "_nasopt_on_close", None)
    while callbacks:
        with contextlib.suppress(Exception):
            callbacks.pop(0)()
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
                # briefly: a connection an interrupted trial still holds (its traceback keeps it) would
                # otherwise make a Ctrl-C wait out the 60 s busy timeout here
                connection.exec_driver_sql("PRAGMA busy_timeout = 500")
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                connection.exec_driver_sql("PRAGMA journal_mode=DELETE")
        except Exception:  # another process (a second worker, the dashboard) still has it open: keep WAL
            pass
    engine.dispose()

