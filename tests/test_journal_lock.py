"""The journal file's lock: a worker killed (SIGKILL) while holding it does not stall the others.

Real processes on a real journal file. A helper process opens the journal as a worker does
(`open_storage`) and takes that storage's own lock, says so, and is killed holding it: the
deterministic form of a worker killed in the middle of an append. The others must go on within a
second or two (Optuna's own lock makes them wait out a 30 s grace period). Plain Optuna processes on the
same file (Optuna's default lock) and nasopt workers still exclude each other: both take `FILE.log.lock`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import (
    JournalFileBackend,
    JournalFileOpenLock,
    JournalFileSymlinkLock,
    JournalStorage,
)
from optuna.trial import TrialState

from nasopt.storage._journal import JournalLock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="flock: POSIX only")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}

STUDY = """
import os, time
import optuna, nasopt
from nasopt.search_spaces.nano import NanoSpace


class Gated(optuna.samplers.RandomSampler):
    # with $NASOPT_TEST_GATE set, trials from number 300 on wait (up to 2 minutes) until that file exists
    def sample_independent(self, study, trial, name, distribution):
        gate, deadline = os.environ.get("NASOPT_TEST_GATE"), time.monotonic() + 120
        while gate and trial.number >= 300 and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().sample_independent(study, trial, name, distribution)


study = nasopt.StudySpec(name="locks", space=NanoSpace(), dataset="nanobench",
                         objectives={{"accuracy": "maximize"}}, sampler=Gated(seed=0), n_trials={n_trials})
"""

HOLDER = """
import sys, time
from nasopt.storage import open_storage

storage = open_storage(sys.argv[1])
print("ready", flush=True)
if len(sys.argv) > 2:  # wait until the workers have written this many bytes
    while __import__("os").path.getsize(sys.argv[1][len("journal:///"):]) < int(sys.argv[2]):
        time.sleep(0.01)
storage._backend._lock.acquire()  # the lock every append of this storage takes
print("locked", flush=True)
time.sleep(600)
"""


def start_holder(tmp_path: Path, url: str, *after_bytes: int) -> subprocess.Popen[str]:
    """A process that opens the journal (through nasopt's own storage) and says 'ready'; it then takes the
    lock (with `after_bytes`: once the file is that large) and says 'locked'."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), url, *map(str, after_bytes)], stdout=subprocess.PIPE,
                              text=True, env=ENV)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    return holder


def locked(holder: subprocess.Popen[str]) -> None:
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"


def kill(process: subprocess.Popen[str]) -> float:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return time.monotonic()


def grows_after(path: Path, size: int, limit: float) -> float:
    """Seconds until `path` is larger than `size` bytes; fails after `limit` seconds."""
    start = time.monotonic()
    while path.stat().st_size <= size:
        assert time.monotonic() - start < limit, f"{path.name} did not grow within {limit} s"
        time.sleep(0.01)
    return time.monotonic() - start


def start_run(tmp_path: Path, url: str, n_trials: int, workers: int, **env: str) -> subprocess.Popen[str]:
    study = tmp_path / "locks_study.py"
    study.write_text(textwrap.dedent(STUDY.format(n_trials=n_trials)))
    return subprocess.Popen([sys.executable, "-m", "nasopt.cli", "run", str(study), "--storage", url,
                             "--workers", str(workers), "-q"], cwd=tmp_path, env={**ENV, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def trials(path: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study as plain Optuna reads it (its default lock, no nasopt code)."""
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path)))).get_trials()


def assert_journal_whole(path: Path) -> None:
    """Every line of the journal is one whole JSON operation (no interleaved or torn appends)."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    for line in data.splitlines():
        assert isinstance(json.loads(line), dict) and b'"op_code":' in line


# ------------------------------------------------------------------------------- killed holders

def test_a_new_run_goes_on_at_once_after_the_lock_holder_is_killed(tmp_path):
    """The holder takes the lock before the run starts: the run waits, saying for whom, in one line; the
    holder is killed and the run writes within a second (the lock file it left is broken at once)."""
    path = tmp_path / "study.log"
    url = f"journal:///{path}"
    holder = start_holder(tmp_path, url)
    locked(holder)
    lock = Path(str(path) + ".lock")
    assert lock.is_symlink()
    run = start_run(tmp_path, url, n_trials=6, workers=1)
    assert run.stderr is not None
    waiting = run.stderr.readline()  # blocks until the run says it waits (after NOTICE = 2 s)
    while waiting and not waiting.startswith("nasopt: waiting"):
        waiting = run.stderr.readline()
    assert waiting.startswith("nasopt: waiting for the journal lock") and f"held by pid {holder.pid}" in waiting
    size = path.stat().st_size
    assert size == 0  # nothing written while the holder lives
    killed = kill(holder)  # its lock file stays behind ...
    waited = grows_after(path, size, limit=10)
    assert waited < 2.0, waited  # ... and is broken at once, not after Optuna's 30 s grace period
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, waiting + err
    assert "breaking the journal lock" not in err and "Traceback" not in err, err
    assert time.monotonic() - killed < 60
    finished = trials(path, "locks")
    assert sum(t.state == TrialState.COMPLETE for t in finished) == 6
    assert not lock.exists()
    assert_journal_whole(path)


def test_workers_go_on_at_once_after_a_lock_holder_is_killed_mid_run(tmp_path):
    """Two workers are writing trials; a process takes the lock among them and is killed holding it:
    the workers write again within a second or two and the study finishes with every trial complete."""
    path = tmp_path / "study.log"
    url = f"journal:///{path}"
    holder = start_holder(tmp_path, url, 30_000)  # takes the lock once the workers are well into the study
    run = start_run(tmp_path, url, n_trials=150, workers=2)
    locked(holder)
    assert run.poll() is None
    time.sleep(1.0)  # the workers pile up behind the lock
    size = path.stat().st_size
    killed = kill(holder)
    waited = grows_after(path, size, limit=30)
    assert waited < 2.0, waited
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    assert "breaking the journal lock" not in err and "Traceback" not in err, err
    assert time.monotonic() - killed < 120
    finished = trials(path, "locks")
    assert sum(t.state == TrialState.COMPLETE for t in finished) >= 150
    assert sorted(t.number for t in finished) == list(range(len(finished)))
    assert not [t.number for t in finished if t.state == TrialState.RUNNING]
    assert_journal_whole(path)


# ------------------------------------------------------------------------------ plain Optuna

def _acquired_within(lock: object, seconds: float) -> threading.Event:
    done = threading.Event()

    def take() -> None:
        lock.acquire()  # type: ignore[attr-defined]
        done.set()

    threading.Thread(target=take, daemon=True).start()
    done.wait(seconds)
    return done


@pytest.mark.parametrize("optuna_lock", [JournalFileSymlinkLock, JournalFileOpenLock])
def test_nasopt_and_plain_optuna_locks_exclude_each_other(tmp_path, optuna_lock):
    path = str(tmp_path / "study.log")
    Path(path).touch()
    ours, theirs = JournalLock(path), optuna_lock(path)
    # Optuna holds it: nasopt waits (a live lock it did not create is never broken early)
    assert theirs.acquire()
    taken = _acquired_within(ours, 0.5)
    assert not taken.is_set()
    theirs.release()
    assert taken.wait(2)
    # nasopt holds it: Optuna waits
    taken = _acquired_within(theirs, 0.5)
    assert not taken.is_set()
    ours.release()
    assert taken.wait(2)
    theirs.release()
    assert not os.path.lexists(path + ".lock")


def test_a_lock_file_nasopt_did_not_create_is_broken_after_the_grace_period_only(tmp_path, capfd):
    """A plain Optuna process killed holding the lock: nasopt cannot know it is dead, so it waits as Optuna
    does (here a 3 s grace period instead of 30 s), saying so in one line."""
    path = str(tmp_path / "study.log")
    Path(path).touch()
    os.symlink(path, path + ".lock")  # what JournalFileSymlinkLock leaves behind
    ours = JournalLock(path, grace_period=3)
    start = time.monotonic()
    ours.acquire()
    waited = time.monotonic() - start
    assert 3 <= waited < 8, waited
    ours.release()
    err = capfd.readouterr().err
    assert "nasopt: waiting for the journal lock" in err and "not a nasopt worker" in err, err
    assert "breaking the journal lock" in err


def test_plain_optuna_writes_the_same_journal_while_nasopt_workers_run(tmp_path):
    """A plain Optuna process (its default lock) and two nasopt workers append to one journal at once:
    both studies are whole and every line of the file is one whole operation."""
    path, gate = tmp_path / "study.log", tmp_path / "plain-started"
    url = f"journal:///{path}"
    plain = tmp_path / "plain.py"
    plain.write_text(textwrap.dedent(f"""
        import os, time
        import optuna
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        while not os.path.exists({str(path)!r}) or os.path.getsize({str(path)!r}) < 10_000:
            time.sleep(0.01)  # the nasopt workers are writing
        storage = JournalStorage(JournalFileBackend({str(path)!r}))
        study = optuna.create_study(study_name="plain", storage=storage, load_if_exists=True)

        def objective(trial):
            open({str(gate)!r}, "w").close()  # a plain trial has started: the gated nasopt trials go on
            return trial.suggest_float("x", -1, 1) ** 2

        study.optimize(objective, n_trials=100)
    """))
    # the nasopt trials from number 300 on wait for the plain process's first trial, so the two write at once
    # however fast either is (a fixed number of look-ups once ended before the plain process got going)
    run = start_run(tmp_path, url, n_trials=600, workers=2, NASOPT_TEST_GATE=str(gate))
    other = subprocess.run([sys.executable, str(plain)], env=ENV, capture_output=True, text=True, timeout=180)
    assert other.returncode == 0, other.stderr
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    ours, theirs = trials(path, "locks"), trials(path, "plain")
    assert sum(t.state == TrialState.COMPLETE for t in ours) >= 600
    assert [t.state for t in theirs] == [TrialState.COMPLETE] * 100
    # the two wrote at the same time
    assert min(t.datetime_start for t in theirs) < max(t.datetime_complete for t in ours)  # type: ignore
    assert sorted(t.number for t in ours) == list(range(len(ours)))
    assert_journal_whole(path)
    assert not os.path.lexists(str(path) + ".lock")


def test_where_flock_is_refused_the_lock_is_optunas_alone(tmp_path, monkeypatch):
    """A file system that refuses flock (ENOLCK: an NFS mount without a lock manager): Optuna's lock file."""
    import errno

    import nasopt.storage._journal as journal

    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(journal.fcntl, "flock", refuse)
    path = str(tmp_path / "study.log")
    Path(path).touch()
    ours, theirs = JournalLock(path), JournalFileSymlinkLock(path)
    assert ours.acquire() and os.path.islink(path + ".lock")
    taken = _acquired_within(theirs, 0.3)
    assert not taken.is_set()  # still excludes plain Optuna ...
    ours.release()
    assert taken.wait(3)  # ... which takes it once released
    theirs.release()
    assert not os.path.lexists(path + ".lock")
