"""Shared by the gradient-method tests: kill a `nasopt run` in the middle of its search, run it again,
and check that the retried trial resumed from the last checkpoint and ran every epoch once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def read_trials(db: Path, study_name: str) -> list[FrozenTrial]:
    """The study's trials, read without creating tables; [] while the study does not exist yet."""
    if not db.exists():
        return []
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}", skip_table_creation=True,
                                             skip_compatibility_check=True)
        return optuna.load_study(study_name=study_name, storage=storage).get_trials()
    except Exception:
        return []


def kill_mid_search_and_resume(study: Path, study_name: str, cwd: Path, epochs: int,
                               catch: tuple[int, int] = (2, 4)) -> FrozenTrial:
    """SIGKILL the run once its search recorded `catch` epochs, run it again; returns the retried trial."""
    command = [sys.executable, "-m", "nasopt.cli", "run", str(study), "-q"]
    proc = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    storage = None  # opened once the database exists: a poll is then a read, not an engine set-up
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if storage is None and (cwd / "nasopt.db").exists():
            try:
                storage = optuna.storages.RDBStorage(f"sqlite:///{cwd / 'nasopt.db'}", skip_table_creation=True,
                                                     skip_compatibility_check=True)
            except Exception:
                storage = None
        try:
            polled = optuna.load_study(study_name=study_name, storage=storage).get_trials() if storage else []
        except Exception:  # the study is not created yet
            polled = []
        running = [t for t in polled if t.state == TrialState.RUNNING]
        if running and catch[0] <= len(running[0].user_attrs.get("search", [])) <= catch[1]:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"the search was not caught between epochs {catch[0]} and {catch[1]}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = len(running[0].user_attrs["search"])

    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = read_trials(cwd / "nasopt.db", study_name)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], [(t.number, t.state) for t in trials]
    failed, retry = trials
    assert retry.system_attrs["failed_trial"] == failed.number
    assert killed_at <= retry.user_attrs["resumed_from_epoch"] <= killed_at + 1  # the last checkpoint before the kill
    assert [r["epoch"] for r in retry.user_attrs["search"]] == list(range(1, epochs + 1))
    assert [a["epoch"] for a in retry.user_attrs["alphas"]] == list(range(1, epochs + 1))
    return retry
