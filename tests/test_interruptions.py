"""Interruptions are not the architecture's fault; orphans of `ask` are recognised at once (issue 14, 2-3).

Real `nasopt run` subprocesses on the tiny studies in tests/studies/, signalled at moments the study files
make deterministic: tiny_interrupt waits in `build` (params written) while a file exists, tiny_raises has
one architecture that always raises, tiny_orphan's sampler SIGKILLs its process inside `ask`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback as OptunaRetry
from optuna.trial import FrozenTrial, TrialState
from test_workers import ENV, counted, read_trials

from nasopt.keys import FAILURE_KEY, FAILURES_KEY
from nasopt.storage import MAX_RETRY, open_storage, stamp_trials
from nasopt.storage._fast._buffer import BufferedStorage
from nasopt.study import _recovery as _objective

STUDIES = Path(__file__).parent / "studies"


def start(study: str, url: str, cwd: Path, **env: str) -> subprocess.Popen[str]:
    # SIGINT as Python's default handling wants it, whatever started the test suite (see test_resume)
    return subprocess.Popen([sys.executable, "-m", "nasopt.cli", "run", str(STUDIES / study), "--storage", url, "-q"],
                            cwd=cwd, env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _schema_ready(url: str) -> bool:
    """Optuna's tables exist and carry their version: a plain Optuna client opening the database earlier
    would stamp the version itself, racing the nasopt run that is creating them (see test_faults)."""
    try:
        if url.startswith("sqlite:///"):
            import sqlite3

            path = Path(url[len("sqlite:///"):])
            if not path.exists():
                return False
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as connection:
                return connection.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
        if url.startswith("postgresql"):
            import psycopg

            with psycopg.connect(url, connect_timeout=5) as connection:
                return connection.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except Exception:
        return False
    return Path(url[len("journal:///"):]).exists()


def trials_of(url: str, name: str) -> list[FrozenTrial]:
    try:
        return read_trials(url, name) if _schema_ready(url) else []
    except Exception:  # the study not created yet
        return []


def wait_for_trial(proc: subprocess.Popen[str], url: str, name: str, marker: Path, timeout: float = 120) -> FrozenTrial:
    """The RUNNING trial of `proc` once it waits in `build` (tiny_interrupt: all its params written)."""
    deadline = time.monotonic() + timeout
    waiting = Path(f"{marker}.{proc.pid}")
    while time.monotonic() < deadline:
        for t in trials_of(url, name) if waiting.exists() else []:
            if (t.state == TrialState.RUNNING and t.params
                    and (t.system_attrs.get("nasopt:worker") or {}).get("pid") == proc.pid):
                return t
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"nasopt run ended ({proc.returncode}) before its trial started:\n{out}\n{err}")
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    pytest.fail(f"no running trial within {timeout} s")


def chain(trials: list[FrozenTrial], first: FrozenTrial) -> list[FrozenTrial]:
    """`first` and its retries, in order, as `trials` have them."""
    return sorted((t for t in trials if first.number in (t.number, t.system_attrs.get("failed_trial"))),
                  key=lambda t: t.number)


CODES = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}
REASONS = {signal.SIGTERM: "interrupted by SIGTERM", signal.SIGINT: "interrupted by Ctrl-C (SIGINT)",
           signal.SIGKILL: "interrupted: its process died (pid"}


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trial_interrupted_four_times_is_retried_until_it_completes(tmp_path):
    """Pre-emptions, scancel, Ctrl-C, a lost machine: none of them counts against the retry cap."""
    url, marker = "sqlite:///nasopt.db", tmp_path / "wait"
    marker.touch()
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGTERM]
    assert len(signals) > MAX_RETRY
    victims = []
    for sig in signals:
        proc = start("tiny_interrupt.py", url, tmp_path, NASOPT_TEST_BLOCK=str(marker))
        victims.append(wait_for_trial(proc, f"sqlite:///{tmp_path / 'nasopt.db'}", "tiny_interrupt", marker))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == CODES[sig], (sig, proc.returncode, err)
        assert "Traceback" not in err, err
    marker.unlink()
    done = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(STUDIES / "tiny_interrupt.py"), "--storage",
                           url, "-q"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    trials = read_trials(f"sqlite:///{tmp_path / 'nasopt.db'}", "tiny_interrupt")
    series = chain(trials, victims[0])
    assert [t.number for t in series[:-1]] == [v.number for v in victims]  # each run took the queued retry
    assert [t.state for t in series] == [TrialState.FAIL] * len(signals) + [TrialState.COMPLETE]
    assert all(t.params == victims[0].params for t in series)
    for t, sig in zip(series, signals, strict=False):
        assert t.user_attrs["fail_reason"].startswith(REASONS[sig]), (sig, t.user_attrs)
        assert t.system_attrs.get(FAILURES_KEY, 0) == 0  # no architecture failure counted
    last = series[-1]
    assert OptunaRetry.retried_trial_number(last) == victims[0].number  # Optuna's view holds
    assert OptunaRetry.retry_history(last) == [v.number for v in victims]
    assert counted(trials) == 2 and sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_an_architecture_that_always_raises_is_capped_and_counts(tmp_path):
    url = f"sqlite:///{tmp_path / 'nasopt.db'}"
    result = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(STUDIES / "tiny_raises.py"), "--storage",
                             url, "-q"], cwd=tmp_path, env={**ENV, "NASOPT_TEST_BAD": str(tmp_path / "bad.json")},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Traceback") == 1 and "this architecture always fails" in result.stderr  # shown once
    trials = read_trials(url, "tiny_raises")
    series = chain(trials, trials[0])
    assert len(series) == MAX_RETRY + 1 and all(t.state == TrialState.FAIL for t in series)
    assert all(t.params == trials[0].params for t in series)
    assert [t.system_attrs[FAILURES_KEY] for t in series] == list(range(1, MAX_RETRY + 2))
    for t in series[:-1]:
        assert t.user_attrs["fail_reason"] == "RuntimeError: this architecture always fails"
    assert series[-1].user_attrs["fail_reason"] == \
        f"RuntimeError: this architecture always fails; failed {MAX_RETRY + 1} times; not retried"
    assert series[-1].system_attrs[FAILURE_KEY] == {"by": "architecture", "retry": False}
    # the capped trial counts: 3 = it and two architectures that completed
    assert counted(trials) == 3 and sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def any_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nasopt.db'}"
    elif request.param == "journal":
        yield f"journal:///{tmp_path / 'nasopt.log'}"
    else:
        yield request.getfixturevalue("pg_url")


def test_a_process_killed_inside_ask_leaves_a_trial_the_next_run_retries_at_once(tmp_path, any_url):
    """Killed after Optuna created the trial, before the objective began: the trial names its (dead)
    process from its creation on, so the next run fails and retries it at once, not after 120 s."""
    marker = tmp_path / "die"
    marker.touch()
    killed = start("tiny_orphan.py", any_url, tmp_path, NASOPT_TEST_KILL=str(marker))
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL and not marker.exists()
    orphan, = trials_of(any_url, "tiny_orphan")
    assert orphan.state == TrialState.RUNNING and not orphan.params
    assert orphan.system_attrs["nasopt:worker"]["pid"] == killed.pid  # written with the trial's creation

    t0 = time.monotonic()
    again = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", str(STUDIES / "tiny_orphan.py"), "--storage",
                            any_url, "-q"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - t0 < 60  # (the 120 s wait for an unclaimed trial would exceed it)
    trials = trials_of(any_url, "tiny_orphan")
    failed, = [t for t in trials if t.number == orphan.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith(f"interrupted: its process died (pid {killed.pid}")
    retry, = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert retry.state == TrialState.COMPLETE
    assert counted(trials) == 2 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_unclaimed_and_remote_trials_are_judged_by_what_their_record_says(tmp_path, monkeypatch):
    """At once when the record names a dead process on this machine; a record of another machine waits for
    its heartbeat (or, while it was only written with the trial's creation, for ORPHAN_AFTER); none: too."""
    storage = open_storage(f"sqlite:///{tmp_path / 'judge.db'}")
    study = optuna.create_study(study_name="judge", storage=storage)
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    records = {"dead here": {"host": host, "pid": dead.pid, "start": None},
               "alive here": {"host": host, "pid": os.getppid(), "start": None},
               "there, asking": {"host": host + "-elsewhere", "pid": 1, "at": "ask"},
               "there, running": {"host": host + "-elsewhere", "pid": 1},
               "unclaimed": None}
    numbers = {}
    for what, record in records.items():
        trial = study.ask()
        if record is not None:
            storage.set_trial_system_attr(trial._trial_id, "nasopt:worker", record)
        numbers[what] = trial.number
    assert _objective.recover_dead_local_trials(study) == [numbers["dead here"]]
    monkeypatch.setattr(_objective, "ORPHAN_AFTER", 0.0)
    assert sorted(_objective.recover_dead_local_trials(study)) == [numbers["there, asking"], numbers["unclaimed"]]
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[numbers["unclaimed"]].user_attrs["fail_reason"].startswith("interrupted: no worker took it up")
    assert by_number[numbers["there, running"]].state == TrialState.RUNNING
    assert by_number[numbers["alive here"]].state == TrialState.RUNNING


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.parametrize("kind", ["fast_path", "optuna_classes", "journal"])
def test_a_trial_names_its_worker_from_its_creation_and_from_its_pop(tmp_path, kind):
    """nasopt's fast path (one transaction, with a first heartbeat), Optuna's own RDB classes (the creating
    transaction) and a journal (the creating line): the record is there before `ask` returns."""
    url = f"journal:///{tmp_path / 's.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    if kind == "fast_path":
        storage = BufferedStorage.around(storage)
        assert isinstance(storage, BufferedStorage)
    study = optuna.create_study(study_name="s", storage=storage)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "at": "ask"}
    stamp_trials(study._storage, {"nasopt:worker": record})
    created = study.ask()
    study.enqueue_trial({})
    popped = study.ask()
    seen = {t.number: t for t in read_trials(url, "s")}
    assert seen[created.number].system_attrs["nasopt:worker"] == record
    assert seen[popped.number].system_attrs["nasopt:worker"] == record and "fixed_params" in seen[popped.number].system_attrs
    if kind == "fast_path":
        import sqlite3

        with sqlite3.connect(tmp_path / "s.db") as connection:
            beating = {row[0] for row in connection.execute("SELECT trial_id FROM trial_heartbeats")}
        assert {created._trial_id, popped._trial_id} <= beating
    study.tell(created, 1.0)
    study.tell(popped, 1.0)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_heartbeat_stale_trial_says_so_and_is_always_retried(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'stale.db'}")
    storage.grace_period = 1  # (20 s in a run)
    study = optuna.create_study(study_name="stale", storage=storage)
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, FAILURES_KEY, MAX_RETRY)  # the cap is not for this
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert failed.user_attrs["fail_reason"].startswith("interrupted: no heartbeat for over 1 s")
    assert failed.system_attrs[FAILURE_KEY] == {"by": "interruption", "retry": True}
    assert retry.system_attrs["failed_trial"] == failed.number and retry.system_attrs[FAILURES_KEY] == MAX_RETRY
