"""The schema of a storage: empty, Optuna's (which version), or another application's — and the lock under
which processes that start together create Optuna's tables one at a time."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from nasopt.errors import UserError
from nasopt.storage._urls import mask_url, sqlite_path

__all__ = ["schema_state", "schema_error", "foreign_error", "schema_lock", "sqlite_lock"]

_SCHEMA_LOCK = 7_305_411_870_214  # pg_advisory_lock key (and MySQL lock name): one process creates the tables at a time


_OPTUNA_TABLES = frozenset({  # the tables of Optuna's RDB schema (optuna/storages/_rdb/models.py), but alembic_version
    "studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials", "trial_params",
    "trial_values", "trial_intermediate_values", "trial_user_attributes", "trial_system_attributes",
    "trial_heartbeats", "version_info"})


def schema_state(connection: Any) -> tuple[str, str | None, list[str]]:
    """(state, schema revision, tables) of the schema Optuna would write into (SQLite's main database,
    PostgreSQL's current schema, the MySQL database): state "fresh" (no tables or views at all), "foreign"
    (tables of another application and none of Optuna's), "current" (Optuna's, at this Optuna's revision)
    or "other" (Optuna's at another revision, or without one). Other tables beside Optuna's are the user's
    business: the database is still Optuna's."""
    import sqlalchemy as sa

    inspector = sa.inspect(connection)
    tables = sorted(set(inspector.get_table_names()) | set(inspector.get_view_names()))
    if not tables:
        return "fresh", None, []
    if not _OPTUNA_TABLES & set(tables):  # another application's alembic_version counts for nothing
        return "foreign", None, tables
    revision = None
    if "alembic_version" in tables:
        revision = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return ("current" if revision == _head_revision() else "other"), revision, tables


def _alembic_script() -> Any:
    from alembic.script import ScriptDirectory

    # Optuna's migrations, read as files where its RDB storage keeps them (no import of its private modules)
    return ScriptDirectory(os.path.join(os.path.dirname(optuna.storages.__file__), "_rdb", "alembic"))


def _head_revision() -> str:
    return str(_alembic_script().get_current_head())


def _listed(names: list[str], first: int = 5) -> str:
    shown = ", ".join(names[:first])
    return shown + (f" and {len(names) - first} more" if len(names) > first else "")


def _dedicated(url: str) -> str:
    """How to give nasopt a database of its own, for the fix of a message."""
    path = sqlite_path(url)
    if path is not None:
        suggest = "nasopt.db" if os.path.abspath(path) != os.path.abspath("nasopt.db") else "nasopt-studies.db"
        return f"use a file of its own for nasopt, e.g. --storage sqlite:///{suggest}"
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        name = "nasopt" if parsed.database != "nasopt" else "nasopt_studies"
        target = parsed.set(database=name).render_as_string(hide_password=True)
    except Exception:
        name, target = "nasopt", "URL"
    return f"create a database of its own for nasopt (CREATE DATABASE {name}) and pass --storage {mask_url(target)}"


def foreign_error(url: str, tables: list[str], create: bool) -> UserError:
    path = sqlite_path(url)
    where = f"storage file {path}" if path is not None else f"storage {mask_url(url)}"
    found = f"holds other tables ({_listed(tables)}) and no Optuna tables"
    if create:
        return UserError(f"{where} {found}: it belongs to another application, and nasopt never writes into it; "
                         f"{_dedicated(url)}")
    return UserError(f"{where} {found}: it is not an nasopt/Optuna database; pass --storage with the database "
                     "your studies are in")


def schema_error(url: str, revision: str | None, tables: list[str] | None = None) -> UserError:
    where = mask_url(url)
    known = [r.revision for r in _alembic_script().walk_revisions()]
    if revision in known:
        return UserError(f"storage {where} was written by an older Optuna (schema {revision}; Optuna "
                         f"{optuna.__version__} needs {_head_revision()}); back it up, then upgrade it with "
                         f"`optuna storage upgrade --storage '{where}'` (put your password in place of ***); "
                         "nasopt never upgrades a schema by itself")
    if revision is None:
        ours = sorted(_OPTUNA_TABLES & set(tables or []))
        named = f" ({_listed(ours)})" if ours else ""
        return UserError(f"storage {where} has tables named like Optuna's{named} but no Optuna schema version: "
                         "another application's, or an Optuna whose set-up was interrupted; nasopt does not write "
                         f"into it; {_dedicated(url)}")
    return UserError(f"storage {where} was written by a newer Optuna (schema {revision}); upgrade this "
                     f"installation (pip install -U optuna; now {optuna.__version__}) or use another database")


@contextlib.contextmanager
def schema_lock(scheme: str, url: str, connection: Any) -> Iterator[None]:
    """One process at a time creates Optuna's tables and stamps their version: a PostgreSQL advisory lock, a
    MySQL named lock, a lock on an SQLite file's folder (`sqlite_lock`)."""
    import sqlalchemy as sa

    if scheme == "sqlite":
        path = sqlite_path(url)
        with sqlite_lock(path) if path is not None else contextlib.nullcontext():
            yield
        return
    if scheme == "postgresql":
        take, give = "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"
    else:  # MySQL, MariaDB: a named lock of the server, waiting up to a minute
        take, give = "SELECT GET_LOCK(CONCAT('nasopt_', :key), 60)", "SELECT RELEASE_LOCK(CONCAT('nasopt_', :key))"
    connection.execute(sa.text(take), {"key": _SCHEMA_LOCK})
    connection.commit()
    try:
        yield
    finally:
        connection.execute(sa.text(give), {"key": _SCHEMA_LOCK})
        connection.commit()


@contextlib.contextmanager
def sqlite_lock(path: Path) -> Iterator[None]:
    """An exclusive lock, among the processes on this machine, for creating the tables of the SQLite file
    `path` and for claiming a study in it (`nasopt.study._worker.check_single_process`).

    It is a `flock` on the file's folder: the file may not exist yet, a lock file would be left behind,
    and a second descriptor on the database file itself would drop SQLite's own POSIX locks of this
    process when closed. Best effort: where the folder cannot be locked (no `fcntl`, some network file
    systems), nothing is locked; one creator still wins and the others see its tables."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
