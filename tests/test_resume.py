"""Resume is the same command again: after SIGKILL, after Ctrl-C, and never into a different study.

A real `nasopt run` is started as a subprocess and watched through its SQLite file; it is killed in the
middle of a trial (one trial finished, the next one RUNNING with a partial learning curve).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

STUDY = Path(__file__).parent / "studies" / "tiny_mobile.py"
EPOCHS, N_TRIALS = 6, 3  # a trial takes a few seconds: long enough to be caught mid-training
COMMAND = [sys.executable, "-m", "nasopt.cli", "run", str(STUDY), "-q", "--n-trials", str(N_TRIALS),
           "--set", f"train.epochs={EPOCHS}"]
# the runs live 9 h east of UTC (Asia/Tokyo's offset as a POSIX rule): resume must not depend on the zone
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "TZ": "JST-9"}


def read_trials(db: Path) -> list[FrozenTrial] | None:
    """The trials of tiny_mobile, read without creating tables; None while the study does not exist."""
    if not db.exists():
        return None
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}", skip_table_creation=True,
                                             skip_compatibility_check=True)
        return optuna.load_study(study_name="tiny_mobile", storage=storage).get_trials()
    except Exception:  # tables or study not created yet
        return None


def start_and_wait_mid_trial(cwd: Path) -> subprocess.Popen[str]:
    """Start the run; return once a trial has finished and the next one is RUNNING mid-training."""
    # a shell without job control starts background jobs with SIGINT ignored, and children inherit that:
    # give the run Python's usual Ctrl-C handling whatever started the test suite
    proc = subprocess.Popen(COMMAND, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"nasopt run ended early with {proc.returncode}: {out}\n{err}")
        trials = read_trials(cwd / "nasopt.db") or []
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if (any(t.state.is_finished() for t in trials) and running
                and 1 <= len(running[0].user_attrs.get("curve", [])) <= EPOCHS - 3):
            return proc
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    pytest.fail("no trial was caught in the middle of training within 180 s")


def rerun(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(COMMAND, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def retry_of(trials: list[FrozenTrial], failed: FrozenTrial) -> FrozenTrial:
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert len(retries) == 1, [(t.number, t.state, t.system_attrs) for t in trials]
    assert retries[0].number > failed.number and retries[0].params == failed.params
    return retries[0]


def assert_nothing_trained_twice(trials: list[FrozenTrial]) -> None:
    """An architecture is trained once; a later proposal of it is a `reused_from` copy of the result."""
    by_number = {t.number: t for t in trials}
    trained = [t for t in trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    keys = [tuple(sorted(t.params.items())) for t in trained]
    assert len(keys) == len(set(keys)), [(t.number, t.params) for t in trained]
    for t in trials:
        if "reused_from" in t.user_attrs:
            source = by_number[t.user_attrs["reused_from"]]
            assert source.number < t.number and source.params == t.params and source.values == t.values
            assert source.state == t.state and "reused_from" not in source.user_attrs


def test_resume_after_sigkill_mid_trial(tmp_path):
    proc = start_and_wait_mid_trial(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # reap it: the next run must see the process gone
    assert proc.returncode == -signal.SIGKILL

    killed_state = read_trials(tmp_path / "nasopt.db")
    running = [t for t in killed_state if t.state == TrialState.RUNNING]
    assert len(running) == 1, [t.state for t in killed_state]
    killed = running[0]
    done_before = {t.number: (t.state, t.values, t.params, t.datetime_complete)
                   for t in killed_state if t.state.is_finished()}
    assert done_before

    result = rerun(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{N_TRIALS} trials finished" in result.stdout
    trials = read_trials(tmp_path / "nasopt.db")
    assert len(finished(trials)) == N_TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    by_number = {t.number: t for t in trials}
    assert by_number[killed.number].state == TrialState.FAIL and by_number[killed.number].values is None
    retry = retry_of(trials, killed)
    assert retry.state == TrialState.COMPLETE and len(retry.user_attrs["curve"]) == EPOCHS
    assert retry.user_attrs["seed"] == killed.user_attrs["seed"]  # retrained from the same seed
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [killed.number]
    for number, before in done_before.items():  # what had finished is untouched
        t = by_number[number]
        assert (t.state, t.values, t.params, t.datetime_complete) == before
    assert_nothing_trained_twice(trials)


def test_ctrl_c_queues_a_retry_and_the_same_command_completes(tmp_path):
    proc = start_and_wait_mid_trial(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert "interrupted" in err and "run the same command to resume" in err

    trials = read_trials(tmp_path / "nasopt.db")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and not [t for t in trials if t.state == TrialState.RUNNING]
    waiting = retry_of(trials, failed[0])
    assert waiting.state == TrialState.WAITING
    done_before = {t.number: (t.values, t.datetime_complete) for t in finished(trials)}

    result = rerun(tmp_path)
    assert result.returncode == 0, result.stderr
    trials = read_trials(tmp_path / "nasopt.db")
    assert len(finished(trials)) == N_TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    by_number = {t.number: t for t in trials}
    assert by_number[waiting.number].state == TrialState.COMPLETE  # the queued retry was the one run
    assert by_number[waiting.number].user_attrs["seed"] == failed[0].user_attrs["seed"]
    assert {n: (by_number[n].values, by_number[n].datetime_complete) for n in done_before} == done_before
    assert_nothing_trained_twice(trials)


@pytest.mark.parametrize("metrics, directions", [
    (["accuracy", "params"], ["maximize", "minimize"]),  # another objective list
    (["accuracy", "latency_ms", "params"], ["maximize", "minimize", "maximize"]),  # another direction
], ids=["other_objectives", "other_direction"])
def test_same_name_other_objectives_is_refused(tmp_path, metrics, directions):
    db = tmp_path / "nasopt.db"
    study = optuna.create_study(study_name="tiny_mobile", storage=f"sqlite:///{db}", directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metrics)
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    time.sleep(0.05)

    result = rerun(tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasopt: error: "), result.stderr
    assert "'tiny_mobile'" in lines[0] and "objectives" in lines[0] and "another `name`" in lines[0]
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nasopt.db"]
