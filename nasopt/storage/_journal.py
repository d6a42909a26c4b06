"""The lock of a journal file: Optuna's own lock file, taken under a kernel lock that dies with its holder.

Optuna's `JournalFileBackend` takes `FILE.log.lock` (a symlink) around every append and, when a process
is killed holding it, the others wait out a 30 s grace period before they break it. `JournalLock` takes
the same `FILE.log.lock`, so plain Optuna processes on the same file (`JournalFileSymlinkLock` and
`JournalFileOpenLock` both create that path) and nasopt workers still exclude each other, but first it
takes `fcntl.flock` on `FILE.log.nasopt-lock`, which the kernel releases the moment its holder dies. The
flock holder records which `FILE.log.lock` it created (inode and change time, with its pid); a nasopt
worker that gets the flock and finds that very lock file still there knows its creator is dead (it no
longer holds the flock) and breaks it at once. A lock file nasopt did not create (a plain Optuna
process's, or one left in the microseconds between creating it and recording it) is waited for as
Optuna waits: broken once it has stood unchanged for `grace_period` seconds. Waiting longer than
`NOTICE` seconds is said in one line on stderr. Where `flock` is missing (Windows) or refused by the file
system, the lock is Optuna's `JournalFileSymlinkLock`, as before.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
import uuid

from optuna.storages.journal import JournalFileSymlinkLock

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["JournalLock", "journal_lock", "NOTICE", "LOCK_SUFFIX", "RECORD_SUFFIX"]

LOCK_SUFFIX = ".lock"  # Optuna's lock file (optuna.storages.journal._file.LOCK_FILE_SUFFIX)
RECORD_SUFFIX = ".nasopt-lock"  # nasopt's flock file and the record of who holds the lock file
NOTICE = 2.0  # seconds of waiting before one line on stderr says for what
GRACE_PERIOD = 30  # Optuna's default: a lock file nasopt did not create is broken after this long unchanged
_NOT_SUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def journal_lock(path: str) -> JournalFileSymlinkLock:
    """The lock for the journal at `path`: `JournalLock` where `fcntl.flock` exists, else Optuna's default."""
    return JournalLock(path) if fcntl is not None else JournalFileSymlinkLock(path)


class JournalLock(JournalFileSymlinkLock):
    """Optuna's `FILE.lock` taken under an flock on `FILE.nasopt-lock`; a dead holder's lock is broken at once.

    A `JournalFileSymlinkLock` (Optuna's default, the same lock file) whose `acquire`/`release` add the
    flock; without flock they are Optuna's own."""

    def __init__(self, path: str, grace_period: int = GRACE_PERIOD) -> None:
        super().__init__(path, grace_period=grace_period)
        self._path = path
        self._lock_file = path + LOCK_SUFFIX
        self._record_file = path + RECORD_SUFFIX
        # the symlink points at the journal beside it (Optuna's stale check stats the target)
        self._target = os.path.basename(path)
        self.grace_period: int = grace_period
        self._fd: int | None = None
        self._using_fallback = False
        self._mutex = threading.Lock()  # one lock object, one holder at a time within this process too

    def __getstate__(self) -> dict[str, object]:
        """Picklable, like Optuna's locks (a storage sent to another process): the mutex and the flock are this
        process's own, so the copy starts without them."""
        state = dict(self.__dict__)
        state.pop("_mutex", None)
        state["_fd"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._mutex = threading.Lock()

    # ------------------------------------------------------------------ Optuna's lock interface

    def acquire(self) -> bool:
        self._mutex.acquire()
        try:
            fd = self._open_flock()
            if fd is None:  # no flock here: Optuna's lock alone
                super().acquire()
                self._using_fallback = True
                return True
            try:
                self._take(fd)
            except BaseException:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise
            self._fd = fd
            return True
        except BaseException:
            self._mutex.release()
            raise

    def release(self) -> None:
        if self._fd is None and not self._using_fallback:
            raise RuntimeError("Error: did not possess lock")  # as Optuna's locks say it
        try:
            if self._using_fallback:
                self._using_fallback = False
                super().release()
                return
            fd, self._fd = self._fd, None
            assert fd is not None
            try:
                os.ftruncate(fd, 0)  # forget the lock file first: a kill in between leaves it to the grace period
                _remove(self._lock_file)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        finally:
            self._mutex.release()

    # ------------------------------------------------------------------ the two steps

    def _open_flock(self) -> int | None:
        """The record file, flock'ed (waiting as long as a live holder holds it); None where flock is refused."""
        try:
            fd = os.open(self._record_file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError:
            return None  # e.g. a folder others may write but this user may not create in: Optuna's lock alone
        try:
            start, sleep, told = time.monotonic(), 0.001, False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    pass
                if not told and time.monotonic() - start > NOTICE:
                    told = True  # a live holder (the kernel frees a dead one's): slow storage or a stopped process
                    pid = _read(fd)[0] or "unknown"
                    print(f"nasopt: waiting for the journal lock of {self._path} held by pid {pid}",
                          file=sys.stderr, flush=True)
                time.sleep(sleep)
                sleep = min(sleep * 2, 0.02)
        except OSError as e:
            os.close(fd)
            if e.errno in _NOT_SUPPORTED:
                return None
            raise
        except BaseException:
            os.close(fd)
            raise

    def _take(self, fd: int) -> None:
        """Create Optuna's lock file while holding the flock; break it at once when a dead nasopt worker left it."""
        sleep, told, start = 0.001, False, time.monotonic()
        seen: tuple[int, int] | None = None
        seen_since = time.monotonic()
        while True:
            try:
                os.symlink(self._target, self._lock_file)
            except FileExistsError:
                try:
                    st = os.lstat(self._lock_file)
                except FileNotFoundError:
                    continue  # released in between
                identity = (st.st_ino, st.st_ctime_ns)
                pid, recorded = _read(fd)
                if recorded == identity:  # ours, and its creator no longer holds the flock: it died
                    _remove(self._lock_file)
                    continue
                if identity != seen:
                    seen, seen_since = identity, time.monotonic()
                elif time.monotonic() - seen_since > self.grace_period:  # as Optuna does with a stale lock
                    print(f"nasopt: breaking the journal lock {self._lock_file}: unchanged for "
                          f"{self.grace_period:g} s", file=sys.stderr, flush=True)
                    _remove(self._lock_file)
                    continue
                if not told and time.monotonic() - start > NOTICE:
                    told = True
                    print(f"nasopt: waiting for the journal lock {self._lock_file}, held by a process that is not a "
                          f"nasopt worker (or left by a killed one; broken after {self.grace_period:g} s)",
                          file=sys.stderr, flush=True)
                time.sleep(sleep)
                sleep = min(sleep * 2, 0.02)
                continue
            st = os.lstat(self._lock_file)
            record = f"{os.getpid()} {st.st_ino} {st.st_ctime_ns} {socket.gethostname()}\n".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
            return


def _read(fd: int) -> tuple[str | None, tuple[int, int] | None]:
    """The pid and the lock file's identity (inode, change time) in the record, or Nones."""
    try:
        fields = os.pread(fd, 512, 0).decode(errors="replace").split()
        return fields[0], (int(fields[1]), int(fields[2]))
    except (OSError, IndexError, ValueError):
        return None, None


def _remove(lock_file: str) -> None:
    """Remove a lock file as Optuna does: rename it first, so two removers never remove a fresh one."""
    aside = f"{lock_file}{uuid.uuid4()}.rename"
    try:
        os.rename(lock_file, aside)
    except FileNotFoundError:
        return
    os.unlink(aside)
