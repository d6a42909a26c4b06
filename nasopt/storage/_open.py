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
import copy
import datetime
import os
import random
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from nasopt.errors import UserError
from nasopt.keys import FAILURE_KEY, FAILURES_KEY, INTERRUPTED_KEY, WORKER_KEY

__all__ = ["DEFAULT_STORAGE", "open_storage", "close_storage", "fast_sqlite", "mask_url", "scrub", "sqlite_path",
           "journal_path", "check_workers", "set_user_attrs", "storage_url", "StorageUnavailable",
           "retry_callback", "retried", "stamp_trials", "sqlite_lock", "on_close", "FAILURE_KEY", "FAILURES_KEY"]

DEFAULT_STORAGE = "sqlite:///nasopt.db"
HEARTBEAT_INTERVAL = 2  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20  # a RUNNING trial without a heartbeat for this long is failed and retried
MAX_RETRY = 3  # retries of an architecture that failed (an exception, out of memory); interruptions do not count
OUTAGE_TIMEOUT = 120.0  # seconds a worker keeps retrying a lost database before it gives up
CONNECT_TIMEOUT = 10  # seconds to wait for a database server to answer a new connection
PING_IDLE = 1.0  # seconds a pooled connection may sit idle before it is pinged on checkout

_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")
_JOURNAL_HEAD = b'{"op_code":'  # every line of an Optuna journal starts like this
_SCHEMA_LOCK = 7_305_411_870_214  # pg_advisory_lock key (and MySQL lock name): one process creates the tables at a time

T = TypeVar("T")


# Why a trial failed, written with its FAIL (system attrs; the words are its `fail_reason` user attr):


class RetryTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry: a WAITING copy with the same params and attrs, `failed_trial` and `retry_history` kept as
    Optuna keeps them (`retried_trial_number`, `retry_history` work). Optuna caps the whole history; here only
    failures of the architecture itself count (`retried`): an interruption from outside (a signal, a dead
    process or machine, a database outage) is always retried. The copy drops the failed runner's identity (a
    popped retry that still named its predecessor's dead process would look dead itself) and its failure;
    it keeps the count of architecture failures so far (`FAILURES_KEY`)."""

    DROP = (WORKER_KEY, INTERRUPTED_KEY, FAILURE_KEY)

    def __call__(self, study: optuna.Study, trial: Any) -> None:
        if not retried(trial.system_attrs):
            return
        trial = copy.copy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in self.DROP}
        super().__call__(study, trial)


def retried(system_attrs: Mapping[str, Any]) -> bool:
    """Whether a FAIL with these system attrs is retried: every one but an architecture failure past the cap
    (decided when it failed, and said in its `fail_reason`); a FAIL without a record is an interruption."""
    failure = system_attrs.get(FAILURE_KEY)
    return not isinstance(failure, dict) or bool(failure.get("retry", True))


def retry_callback() -> RetryTrial:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryTrial(max_retry=None)  # the cap is `retried`'s


class StorageUnavailable(UserError):
    """The database stayed unreachable for longer than `OUTAGE_TIMEOUT`."""


# -- URLs and secrets ------------------------------------------------------------------------------

def mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe for messages and logs."""
    url = re.sub(r"(://[^:/@?#\s]*:)[^\s]*@", r"\1***@", url)  # user:PASSWORD@host (up to the last @)
    return re.sub(r"(?i)([?&](?:password|passwd)=)[^&\s]*", r"\1***", url)


def _password(url: str) -> str | None:
    match = re.match(r"[^:]+://[^:/@?#\s]*:([^\s]*)@", url)
    if match:
        return match.group(1)
    match = re.search(r"(?i)[?&](?:password|passwd)=([^&\s]*)", url)
    return match.group(1) if match else None


def scrub(text: str, url: str | None = None) -> str:
    """`text` with URL passwords masked, and the password of `url` (raw or decoded) removed anywhere."""
    text = mask_url(text)
    secret = _password(url) if url else None
    if secret:
        for form in {secret, unquote(secret)}:
            if len(form) >= 3:  # shorter ones would garble the text; URLs are masked anyway
                text = text.replace(form, "***")
    return text


def storage_url(storage: str | BaseStorage | None) -> str | None:
    """The URL a storage was opened from (None when unknown)."""
    if storage is None or isinstance(storage, str):
        return storage
    storage = getattr(storage, "_backend", storage)
    return getattr(storage, "url", None)


def sqlite_path(url: str) -> Path | None:
    """The file of an `sqlite:///FILE` (or `sqlite+DRIVER:///FILE`) URL, without its `?query`; None for
    other schemes and for URLs that name no file (`sqlite://`, `sqlite:///`, `sqlite:///:memory:`)."""
    match = re.match(r"sqlite(?:\+\w+)?:///([^?]*)", url, re.IGNORECASE)
    if match is None:
        return None
    path = match.group(1)
    return None if path in ("", ":memory:") else Path(path)


def journal_path(url: str) -> Path | None:
    """The file of a `journal:///FILE` URL: relative like sqlite:///, absolute with four slashes."""
    if not url.startswith("journal:///"):
        return None
    path = url[len("journal:///"):]
    return Path(path) if path else None


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def check_workers(url: str | None, workers: int) -> None:
    """SQLite serves one process: several workers need a journal file or a database server."""
    if workers > 1 and _scheme(url or DEFAULT_STORAGE) == "sqlite":
        raise UserError(f"storage {mask_url(url or DEFAULT_STORAGE)} is SQLite, which serves one process; with "
                        f"--workers {workers} use a journal file on this machine (--storage journal:///nasopt.log) "
                        "or PostgreSQL for several machines (--storage postgresql://USER@HOST/DB)")


# -- files -----------------------------------------------------------------------------------------

def _folder(path: Path) -> str:
    """The folder of `path` as a user should read it (absolute: "." says little in a message)."""
    return os.path.abspath(path.parent)


def _check_file(path: Path, url: str, kind: str, create: bool) -> None:
    scheme = "sqlite" if kind == "sqlite" else "journal"
    if path.is_dir():
        name = "nasopt.db" if kind == "sqlite" else "nasopt.log"
        raise UserError(f"storage {url} points to a directory; give a file, e.g. {scheme}:///{path / name}")
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
            raise UserError(f"cannot write storage file {path}: its folder {_folder(path)} is read-only, and {beside} "
                            "beside the file; make the folder writable or move the file to a writable folder "
                            f"({scheme}:///PATH)")
    elif create and not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot create storage file {path}: folder {_folder(path)} is not writable; make it "
                        f"writable or choose a file in a writable folder ({scheme}:///PATH)")


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


# -- riding out database outages ------------------------------------------------------------------

def _transient(exc: BaseException) -> BaseException | None:
    """The lost or refused connection, server shutting down or starting up, or deadlock behind `exc`
    (worth a retry), else None."""
    from sqlalchemy import exc as sa_exc

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _sqlite_error(e) is not None and not _sqlite_busy(e):
            return None  # a file, not a server: read-only, unopenable, full or damaged stays so (see _sqlite_user_error)
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return e
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return e
        e = e.__cause__ or e.__context__
    return None


def _sqlite_error(e: BaseException) -> BaseException | None:
    """The `sqlite3` error behind an SQLAlchemy error (or `e` itself), else None."""
    orig = getattr(e, "orig", e)
    return orig if type(orig).__module__ == "sqlite3" else None


def _sqlite_busy(e: BaseException) -> bool:
    """Another process holds the SQLite file's lock (past the busy timeout): worth waiting for."""
    text = str(_sqlite_error(e)).lower()
    return "locked" in text or "busy" in text


def _sqlite_user_error(exc: BaseException, url: str) -> UserError | None:
    """The one-line `UserError` for an SQLite error that the user must fix (a read-only file or folder, a
    full disk, a damaged file), else None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        error = _sqlite_error(e)
        if error is not None:
            break
        e = e.__cause__ or e.__context__
    else:
        return None
    text = str(error).lower()
    path = sqlite_path(url)
    where = str(path) if path is not None else mask_url(url)
    folder = _folder(path) if path is not None else "its folder"
    if "readonly" in text or "read-only" in text:
        return UserError(f"cannot write storage file {where}: SQLite says it is read-only ({error}); make the file "
                         f"and its folder {folder} writable, or choose another --storage")
    if "unable to open" in text:
        return UserError(f"cannot open storage file {where} ({error}): SQLite cannot open it or create its journal "
                         f"in folder {folder}; make the folder and the file writable, or choose another --storage")
    if "disk is full" in text:
        return UserError(f"cannot write storage file {where}: the disk is full ({error}); free some space or choose "
                         "another --storage")
    if "malformed" in text or "not a database" in text:
        return UserError(f"storage file {where} is damaged ({error}); restore it from a backup or choose another "
                         "--storage")
    return None


def _first_line(error: BaseException) -> str:
    """The first line of an error, without SQLAlchemy's "(driver.ErrorClass) " prefix."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return re.sub(r"^\([\w.]+\) ", "", first)


class _Outage:
    """Retry with exponential back-off (0.2 s doubling to 5 s, jittered) for up to OUTAGE_TIMEOUT."""

    local = threading.local()  # depth > 0: a retry loop further up the stack handles errors

    def __init__(self, url: str, who: str = "") -> None:
        self.url, self.timeout = url, OUTAGE_TIMEOUT
        self.who = who  # "worker 3: " in a forked worker: names the process in its messages
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.up_since = time.monotonic()  # connected without a failed call since (opened, or back from an outage)

    def _say(self, text: str) -> None:
        print(f"nasopt: {self.who}{scrub(text, self.url)}", file=sys.stderr, flush=True)

    def lost(self, error: BaseException) -> None:
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self._say(f"lost the database ({_first_line(error)}); retrying for up to {self.timeout:.0f} s")

    def back(self) -> None:
        with self._lock:
            if self.down_since is not None:
                self._say(f"database back after {time.monotonic() - self.down_since:.1f} s; carrying on")
                self.down_since = None
                self.up_since = time.monotonic()

    def connected_for(self) -> float:
        """Seconds this process has reached the database without a failed call (0 while it cannot)."""
        with self._lock:
            return 0.0 if self.down_since is not None else time.monotonic() - self.up_since

    def call(self, storage: RDBStorage, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if getattr(self.local, "depth", 0):
            return fn(*args, **kwargs)
        self.local.depth = 1
        try:
            start, delay, attempt = time.monotonic(), 0.2, 0
            while True:
                try:
                    result = fn(*args, **kwargs)
                    self.back()
                    return result
                except optuna.exceptions.UpdateFinishedTrialError:
                    if attempt and fn.__name__ == "set_trial_state_values":
                        # the attempt that lost its connection had committed after all
                        trial = RDBStorage.get_trial(storage, args[0])
                        if trial.state == kwargs.get("state", args[1] if len(args) > 1 else None):
                            self.back()
                            return True  # type: ignore[return-value]
                    raise
                except Exception as e:
                    cause = _transient(e)
                    if cause is None:
                        user_error = _sqlite_user_error(e, self.url)
                        if user_error is not None:
                            raise user_error from None
                        raise
                    self.lost(cause)
                    storage.scoped_session.remove()  # a session whose connection died is not reused
                    if time.monotonic() - start > self.timeout:
                        raise StorageUnavailable(
                            f"the database {mask_url(self.url)} stayed unreachable for {self.timeout:.0f} s "
                            f"({scrub(_first_line(cause), self.url)}); the running trial is retried when a "
                            "worker runs again") from None
                    time.sleep(delay * (0.5 + random.random()))
                    delay, attempt = min(delay * 2, 5.0), attempt + 1
        finally:
            self.local.depth = 0


class _ResilientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose calls survive a short database outage (see `_Outage`).

    A heartbeat that cannot reach the server is skipped (the next one, HEARTBEAT_INTERVAL later,
    tries again) instead of killing the heartbeat thread; `set_trial_state_values` that committed
    before its connection dropped is recognised on the retry; a trial is judged heartbeat-stale only
    on evidence this process has (`_get_stale_trial_ids`).
    """

    def __init__(self, url: str, who: str = "", **kwargs: Any) -> None:
        self._outage = _Outage(url, who)
        self._stale_lock = threading.Lock()
        super().__init__(url, **kwargs)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """RUNNING trials whose heartbeat is older than the grace period, counted only while this process
        reached the database all along: a worker that stayed silent for the grace period while the database
        answered is dead (or cut off alone). Right after this process opened the storage or came back from
        an outage, the silence may be everyone's outage (every live worker beats again within a heartbeat
        interval of the database's return): until it has been connected for the grace period, only trials
        silent for longer than the grace period plus OUTAGE_TIMEOUT (what a worker rides out) are stale."""
        return self._outage.call(self, self._stale_trial_ids, study_id)

    def _stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period if self.grace_period is not None else 2 * (self.heartbeat_interval or 0)
        if self._outage.connected_for() <= grace:  # (0 while a retry of this very call is under way)
            grace += int(self._outage.timeout)
        with self._stale_lock:  # Optuna's query reads the grace period from the storage
            configured, self.grace_period = self.grace_period, grace
            try:
                return RDBStorage._get_stale_trial_ids(self, study_id)
            finally:
                self.grace_period = configured

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
            self._outage.back()
        except Exception as e:
            cause = _transient(e)
            if cause is None:
                raise
            self._outage.lost(cause)
            self.scoped_session.remove()

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for local in ("_outage", "_stale_lock", "_nasopt_on_close", "_nasopt_pragmas"):  # this process's: not pickled
            state.pop(local, None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._outage = _Outage(self.url)  # a process of its own: named by its own open_storage
        self._stale_lock = threading.Lock()


_RETRIED = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
            "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
            "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
            "create_new_trial", "_create_new_trial", "set_trial_param", "_set_trial_param", "get_trial_param",
            "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
            "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials",
            "_get_trials", "get_best_trial", "_get_best_trial_id")


def _retrying(name: str) -> Callable[..., Any]:
    original = getattr(RDBStorage, name)

    def method(self: _ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._outage.call(self, original.__get__(self), *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = original.__doc__
    return method


for _name in _RETRIED:
    setattr(_ResilientRDBStorage, _name, _retrying(_name))


# -- the worker record of a new trial ---------------------------------------------------------------

def stamp_trials(storage: object, attrs: Mapping[str, Any]) -> None:
    """Write the system attrs `attrs` (the runner's worker record) with every trial this process creates, in
    the same transaction or journal line, and with every trial it takes from the queue (in the same
    transaction on the fast path, `nasopt.storage._fast._buffer`; right after the state change on Optuna's own classes).
    A process killed between Optuna's `ask` and its objective's first write thus leaves a trial that names
    its process, and a worker on the same machine retries it at once. Only in the process that called it:
    a storage object that reaches another process (a fork) stamps nothing there."""
    backend = getattr(storage, "_backend", storage)  # inside Optuna's (or nasopt's) cache; a journal's is a file
    backend = backend if isinstance(backend, BaseStorage) else storage
    backend._nasopt_stamp = (os.getpid(), dict(attrs))  # type: ignore[attr-defined]


def _stamp(storage: object) -> dict[str, Any] | None:
    stamp = getattr(storage, "_nasopt_stamp", None)
    return stamp[1] if stamp is not None and stamp[0] == os.getpid() else None


def _stamped_template(stamp: Mapping[str, Any]) -> FrozenTrial:
    """A new RUNNING trial as Optuna's `create_new_trial` makes one (start time now, naive local time as Optuna
    passes it), with the stamp as its system attrs."""
    return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, values=None,
                       datetime_start=datetime.datetime.now(), datetime_complete=None, params={}, distributions={},
                       user_attrs={}, system_attrs=copy.deepcopy(dict(stamp)), intermediate_values={}, trial_id=-1)


def _stamp_created(create: Callable[..., T]) -> Callable[..., T]:
    def create_stamped(self: Any, study_id: int, template_trial: FrozenTrial | None = None) -> T:
        stamp = _stamp(self) if template_trial is None else None
        return create(self, study_id, _stamped_template(stamp) if stamp else template_trial)

    create_stamped.__name__ = create_stamped.__qualname__ = create.__name__
    return create_stamped


def _stamp_started(set_state: Callable[..., bool]) -> Callable[..., bool]:
    def set_state_stamped(self: Any, trial_id: int, state: TrialState, values: Any = None) -> bool:
        done = set_state(self, trial_id, state, values)
        stamp = _stamp(self) if done and state == TrialState.RUNNING else None
        for key, value in (stamp or {}).items():
            self.set_trial_system_attr(trial_id, key, value)
        return done

    set_state_stamped.__name__ = set_state_stamped.__qualname__ = "set_trial_state_values"
    return set_state_stamped


_ResilientRDBStorage._create_new_trial = _stamp_created(_ResilientRDBStorage._create_new_trial)  # type: ignore[method-assign]
_ResilientRDBStorage.set_trial_state_values = _stamp_started(  # type: ignore[method-assign]
    _ResilientRDBStorage.set_trial_state_values)


def _stale_with_reasons(find: Callable[..., list[int]]) -> Callable[..., list[int]]:
    """The heartbeat-stale trials, each given its `fail_reason` before Optuna fails it (a finished trial takes
    no more writes): an interruption, always retried (`RetryTrial`)."""
    def find_stale(self: Any, study_id: int) -> list[int]:
        stale = []
        for trial_id in find(self, study_id):
            try:
                self.set_trial_user_attr(trial_id, "fail_reason", f"interrupted: no heartbeat for over "
                                         f"{self.grace_period or GRACE_PERIOD} s (its machine or process was lost)")
                self.set_trial_system_attr(trial_id, FAILURE_KEY, {"by": "interruption", "retry": True})
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
                continue
            stale.append(trial_id)
        return stale

    find_stale.__name__ = find_stale.__qualname__ = "_get_stale_trial_ids"
    return find_stale


_ResilientRDBStorage._get_stale_trial_ids = _stale_with_reasons(  # type: ignore[method-assign]
    _ResilientRDBStorage._get_stale_trial_ids)


class _JournalStorage(JournalStorage):
    """Optuna's JournalStorage whose new trials carry the stamp (`stamp_trials`) in their creating line."""

    create_new_trial = _stamp_created(JournalStorage.create_new_trial)
    set_trial_state_values = _stamp_started(JournalStorage.set_trial_state_values)


# -- opening ---------------------------------------------------------------------------------------

_OPTUNA_TABLES = frozenset({  # the tables of Optuna's RDB schema (optuna/storages/_rdb/models.py), but alembic_version
    "studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials", "trial_params",
    "trial_values", "trial_intermediate_values", "trial_user_attributes", "trial_system_attributes",
    "trial_heartbeats", "version_info"})


def _schema_state(connection: Any) -> tuple[str, str | None, list[str]]:
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
    from optuna.storages._rdb import storage as rdb_module

    return ScriptDirectory(os.path.join(os.path.dirname(rdb_module.__file__), "alembic"))


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


def _foreign_error(url: str, tables: list[str], create: bool) -> UserError:
    path = sqlite_path(url)
    where = f"storage file {path}" if path is not None else f"storage {mask_url(url)}"
    found = f"holds other tables ({_listed(tables)}) and no Optuna tables"
    if create:
        return UserError(f"{where} {found}: it belongs to another application, and nasopt never writes into it; "
                         f"{_dedicated(url)}")
    return UserError(f"{where} {found}: it is not an nasopt/Optuna database; pass --storage with the database "
                     "your studies are in")


def _schema_error(url: str, revision: str | None, tables: list[str] | None = None) -> UserError:
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
def _schema_lock(scheme: str, url: str, connection: Any) -> Iterator[None]:
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


def _open_rdb(url: str, heartbeat: bool, create: bool = True, who: str = "") -> RDBStorage:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    scheme = _scheme(url)
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
            state, revision, tables = _schema_state(connection)
            with contextlib.ExitStack() as held:
                # several processes starting at once on an empty database: one creates the tables (and stamps
                # their version, in a later transaction); the others wait for it and look again
                if state in ("fresh", "other"):
                    connection.commit()
                    held.enter_context(_schema_lock(scheme, url, connection))
                    for _ in range(20):  # tables without a version: a plain Optuna client may be stamping it now
                        state, revision, tables = _schema_state(connection)
                        connection.commit()
                        if state != "other" or revision is not None:
                            break
                        time.sleep(0.25)
                if state == "foreign":
                    raise _foreign_error(url, tables, create)
                if state == "other":
                    raise _schema_error(url, revision, tables)
                if state == "fresh" and not create:
                    raise UserError(f"no studies in {mask_url(url)} (no Optuna tables); run a study there first "
                                    "(nasopt run FILE --storage URL) or pass another --storage")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = _ResilientRDBStorage(url, who, engine_kwargs=engine_kwargs, skip_compatibility_check=True,
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
    around every storage call (`_Outage`) replaces it."""
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
        storage = _JournalStorage(JournalFileBackend(str(path), lock_obj=journal_lock(str(path))))
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
    scheme = _scheme(url)
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
        user_error = _sqlite_user_error(e, url)
        if user_error is not None:
            raise user_error from None
        first = _first_line(e)
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
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                connection.exec_driver_sql("PRAGMA journal_mode=DELETE")
        except Exception:  # another process (a second worker, the dashboard) still has it open: keep WAL
            pass
    engine.dispose()

