"""Riding out database outages: every storage call retried with back-off for up to OUTAGE_TIMEOUT seconds,
heartbeats that skip a lost beat, and staleness judged only on evidence this process has."""

from __future__ import annotations

import random
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage

from nasopt.errors import UserError
from nasopt.storage._urls import folder_of, mask_url, scrub, sqlite_path

__all__ = ["HEARTBEAT_INTERVAL", "GRACE_PERIOD", "OUTAGE_TIMEOUT", "StorageUnavailable", "Outage",
           "ResilientRDBStorage", "transient", "first_line", "sqlite_user_error"]

HEARTBEAT_INTERVAL = 2  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20  # a RUNNING trial without a heartbeat for this long is failed and retried
OUTAGE_TIMEOUT = 120.0  # seconds a worker keeps retrying a lost database before it gives up

T = TypeVar("T")


class StorageUnavailable(UserError):
    """The database stayed unreachable for longer than `OUTAGE_TIMEOUT`."""


# -- riding out database outages ------------------------------------------------------------------

def transient(exc: BaseException) -> BaseException | None:
    """The lost or refused connection, server shutting down or starting up, or deadlock behind `exc`
    (worth a retry), else None."""
    from sqlalchemy import exc as sa_exc

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _sqlite_error(e) is not None and not _sqlite_busy(e):
            return None  # a file, not a server: read-only, unopenable, full or damaged stays so (see sqlite_user_error)
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


def sqlite_user_error(exc: BaseException, url: str) -> UserError | None:
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
    folder = folder_of(path) if path is not None else "its folder"
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


def first_line(error: BaseException) -> str:
    """The first line of an error, without SQLAlchemy's "(driver.ErrorClass) " prefix."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return re.sub(r"^\([\w.]+\) ", "", first)


class Outage:
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
                self._say(f"lost the database ({first_line(error)}); retrying for up to {self.timeout:.0f} s")

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
                    cause = transient(e)
                    if cause is None:
                        user_error = sqlite_user_error(e, self.url)
                        if user_error is not None:
                            raise user_error from None
                        raise
                    self.lost(cause)
                    storage.scoped_session.remove()  # a session whose connection died is not reused
                    if time.monotonic() - start > self.timeout:
                        raise StorageUnavailable(
                            f"the database {mask_url(self.url)} stayed unreachable for {self.timeout:.0f} s "
                            f"({scrub(first_line(cause), self.url)}); the running trial is retried when a "
                            "worker runs again") from None
                    time.sleep(delay * (0.5 + random.random()))
                    delay, attempt = min(delay * 2, 5.0), attempt + 1
        finally:
            self.local.depth = 0


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose calls survive a short database outage (see `Outage`).

    A heartbeat that cannot reach the server is skipped (the next one, HEARTBEAT_INTERVAL later,
    tries again) instead of killing the heartbeat thread; `set_trial_state_values` that committed
    before its connection dropped is recognised on the retry; a trial is judged heartbeat-stale only
    on evidence this process has (`_get_stale_trial_ids`).
    """

    def __init__(self, url: str, who: str = "", **kwargs: Any) -> None:
        self._outage = Outage(url, who)
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
            cause = transient(e)
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
        self._outage = Outage(self.url)  # a process of its own: named by its own open_storage
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

    def method(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._outage.call(self, original.__get__(self), *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = original.__doc__
    return method


for _name in _RETRIED:
    setattr(ResilientRDBStorage, _name, _retrying(_name))


