"""Database outages longer than the heartbeat grace period, against the real PostgreSQL.

Real `nasopt run --workers N` processes train real (tiny) networks while the test blocks its own
database (`ALTER DATABASE ... ALLOW_CONNECTIONS false`, its sessions ended): every worker loses the
database at once, as in a server restart or a fail-over. Other databases on the server are not touched.
"""

from __future__ import annotations

import time

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState
from test_faults import EPOCHS, TRAIN_STUDY, Watcher, mid_training, retries_of, start
from test_workers import NANO_STUDY, admin_connection, assert_settled, write_study

from nasopt.storage import GRACE_PERIOD, OUTAGE_TIMEOUT, open_storage, retry_callback
from nasopt.storage import _open as nasopt_storage


def block(url: str, seconds: float) -> None:
    """No connection to the database of `url` for `seconds`: new ones are refused, open ones are ended."""
    from psycopg import sql

    name = url.rsplit("/", 1)[1]
    with admin_connection() as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:  # (a session that was starting as the block began is ended too)
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                              "AND pid <> pg_backend_pid()", (name,))
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


def test_an_outage_past_the_grace_period_is_ridden_out_by_every_worker(tmp_path, pg_url):
    """30 s without the database (the grace period is 20 s), in the middle of three workers' trials: no
    trial is failed as stale, no worker dies, the run ends with exit 0 and the full budget."""
    assert 25 <= GRACE_PERIOD + 10 <= OUTAGE_TIMEOUT
    n_trials, workers = 8, 3
    study = write_study(tmp_path, "outage", n_trials, TRAIN_STUDY)
    proc = start(study, pg_url, tmp_path, "--workers", workers)
    try:
        watch = Watcher(pg_url, "outage")
        hit = watch.wait(proc, "two trials in the middle of training",
                         lambda ts: (found := mid_training(ts, proc.pid)) and len(found) >= 2 and found)
        watch.storage = None
        block(pg_url, 30)
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "crashed" not in err, err
    assert "lost the database" in err and "database back after" in err, err
    trials = watch.trials()
    assert [(t.number, t.state.name) for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)] == []
    by_number = {t.number: t for t in trials}
    for t in hit:  # the trials the outage hit mid-training finished where they were, with all their epochs
        assert by_number[t.number].state == TrialState.COMPLETE
        assert len(by_number[t.number].user_attrs["curve"]) == EPOCHS
        assert by_number[t.number].params == t.params
    assert_settled(trials, n_trials, workers)


def test_a_worker_whose_trial_was_failed_by_others_drops_it_and_goes_on(tmp_path, pg_url):
    """A worker cut off from the database alone (its heartbeat silent for over the grace period while the
    others reached the database) finds its trial failed and retried by another worker: it stops training
    that trial, says so in one line, and carries on; the retry completes."""
    n_trials, workers = 4, 2
    study = write_study(tmp_path, "taken", n_trials, TRAIN_STUDY)
    proc = start(study, pg_url, tmp_path, "--workers", workers)
    try:
        watch = Watcher(pg_url, "taken")
        victim = watch.wait(proc, "a trial in the middle of training", lambda ts: mid_training(ts, proc.pid))[0]
        # what another worker's stale check does (optuna.storages.fail_stale_trials): FAIL, then the retry
        other = optuna.load_study(study_name="taken", storage=watch.storage)
        other._storage.set_trial_state_values(victim._trial_id, TrialState.FAIL)
        retry_callback()(other, other._storage.get_trial(victim._trial_id))
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "crashed" not in err, err
    said = [line for line in err.splitlines() if f"trial {victim.number} " in line]
    assert len(said) == 1 and "failed by another worker" in said[0], err
    trials = watch.trials()
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state == TrialState.FAIL and by_number[victim.number].values is None
    retry, = retries_of(trials, victim)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [victim.number]
    assert_settled(trials, n_trials, workers)


# ------------------------------------------------------------------- who may judge a trial stale

def _silent_trial(url: str, name: str, seconds: float) -> FrozenTrial:
    """A RUNNING trial of a worker on another machine whose last heartbeat was `seconds` ago."""
    from nasopt.search_spaces.nano import NanoSpace

    outside = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(
        url, skip_compatibility_check=True, skip_table_creation=True))
    lost = outside.ask()
    for param, distribution in NanoSpace().distributions().items():
        lost.suggest_categorical(param, distribution.choices) if hasattr(distribution, "choices") else \
            lost.suggest_int(param, distribution.low, distribution.high)
    outside._storage.set_trial_system_attr(lost._trial_id, "nasopt:worker", {"host": "elsewhere", "pid": 1})
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO trial_heartbeats (trial_id, heartbeat) "
                                 "VALUES (:id, now() - make_interval(secs => :s))"), {"id": lost._trial_id, "s": seconds})
    finally:
        engine.dispose()
    return outside._storage.get_trial(lost._trial_id)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_only_a_worker_connected_for_the_grace_period_judges_trials_stale(pg_url):
    """Right after it opened the storage or came back from an outage, a worker cannot tell a dead worker's
    trial from one whose worker was cut off with it: it fails only trials silent for longer than any
    outage a live worker rides out; once it has been connected for the grace period, it judges as before."""
    storage = open_storage(pg_url)
    try:
        study = optuna.create_study(study_name="judge", storage=storage, directions=["maximize"])
        recent = _silent_trial(pg_url, "judge", GRACE_PERIOD + 10)
        long_ago = _silent_trial(pg_url, "judge", GRACE_PERIOD + OUTAGE_TIMEOUT + 60)
        outage = storage._outage
        assert storage._get_stale_trial_ids(study._study_id) == [long_ago._trial_id]  # just opened
        outage.up_since -= GRACE_PERIOD + 1  # connected for longer than the grace period
        assert sorted(storage._get_stale_trial_ids(study._study_id)) == sorted([recent._trial_id, long_ago._trial_id])
        outage.lost(ConnectionError("connection refused"))
        outage.back()  # back from an outage: its own silence may be everyone's
        assert storage._get_stale_trial_ids(study._study_id) == [long_ago._trial_id]
        outage.up_since -= GRACE_PERIOD + 1
        assert len(storage._get_stale_trial_ids(study._study_id)) == 2
    finally:
        nasopt_storage.close_storage(storage)


def test_a_dead_remote_workers_trial_is_still_retried_after_the_grace_period(tmp_path, pg_url):
    """A worker elsewhere went silent 10 s past the grace period: a run started now fails its trial once it
    has itself been connected for the grace period, and retries it with the same params."""
    from test_workers import nasopt_cli

    study = write_study(tmp_path, "remote", 2, NANO_STUDY)
    assert nasopt_cli("run", study, "--storage", pg_url, "-q", cwd=tmp_path).returncode == 0
    lost = _silent_trial(pg_url, "remote", GRACE_PERIOD + 10)
    study = write_study(tmp_path, "remote", 4, NANO_STUDY)
    t0 = time.monotonic()
    result = nasopt_cli("run", study, "--storage", pg_url, "-q", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - t0 < 90
    trials = Watcher(pg_url, "remote").trials()
    assert {t.number: t for t in trials}[lost.number].state == TrialState.FAIL
    retry, = retries_of(trials, lost)
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert_settled(trials, 4, 1)
