"""Write-behind for the runner's own trials (nasopt.storage._fast._buffer): what another reader sees, and when.

Each test opens the database a second time with a plain Optuna RDBStorage, the way the dashboard,
another worker or pandas would, and checks what has reached it.
"""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

import nasopt
from nasopt.search_spaces.nano import NanoSpace
from nasopt.storage import open_storage
from nasopt.storage._fast._buffer import BufferedStorage, flush, hold


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'buffer.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["local", "JST-9"])
def zone(request):
    """The suite's own time zone, and one 9 h east of UTC (trial times are stored in UTC, read in local time)."""
    from test_timezones import local_tz

    if request.param == "local":
        yield request.param
        return
    with local_tz(request.param):
        yield request.param


def _outside(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)


def _study(url: str) -> optuna.Study:
    storage = BufferedStorage(open_storage(url, heartbeat=False))
    study = optuna.create_study(storage=storage, study_name="buffer", directions=["maximize", "minimize"])
    other = optuna.load_study(study_name="buffer", storage=_outside(url))  # another worker's first trial
    other.tell(other.ask({"op": optuna.distributions.CategoricalDistribution(["conv3x3", "skip"]),
                          "width": optuna.distributions.IntDistribution(8, 64)}), [0.1, 1.0])
    return study


def _commits(storage: BufferedStorage) -> list[int]:
    """Transactions that reach the database: COMMITs, and writing statements run in autocommit mode (on
    PostgreSQL a flush or a trial's end is one such statement)."""
    counter = [0]
    engine = storage._backend.engine

    def statement(conn, _cursor, sql, *_args):
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT" and \
                sql.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "WITH"):
            counter[0] += 1

    sa.event.listen(engine, "commit", lambda _conn: counter.__setitem__(0, counter[0] + 1))
    sa.event.listen(engine, "before_cursor_execute", statement)
    return counter


def test_held_writes_reach_other_readers_at_flush_and_at_the_end(url):
    study = _study(url)
    outside = _outside(url)
    commits = _commits(study._storage)
    study.get_trials()  # what the runner reads before every trial (the params' distributions among it)
    trial = study.ask()
    hold(trial)
    a = trial.suggest_categorical("op", ["conv3x3", "skip"])
    b = trial.suggest_int("width", 8, 64)
    trial.set_user_attr("arch", f"{a}-{b}")
    trial.storage.set_trial_system_attr(trial._trial_id, "nasopt:worker", {"pid": 1})
    seen = outside.get_trial(trial._trial_id)
    assert seen.params == {} and seen.user_attrs == {}  # nothing written yet...
    assert trial.params == {"op": a, "width": b}  # ...but the trial itself sees its own writes
    assert study._storage.get_trial(trial._trial_id).user_attrs == {"arch": f"{a}-{b}"}
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert running[0].params == {"op": a, "width": b}  # and so does this process's view of the study

    before = commits[0]
    flush(trial)
    assert commits[0] == before + 1  # params and attrs in one transaction
    seen = outside.get_trial(trial._trial_id)
    assert seen.params == {"op": a, "width": b} and seen.user_attrs == {"arch": f"{a}-{b}"}
    assert seen.system_attrs["nasopt:worker"] == {"pid": 1}

    trial.set_user_attr("accuracy", 0.9)
    before = commits[0]
    study.tell(trial, [0.9, 123.0])
    assert commits[0] == before + 1  # the last attrs, the values and the state together
    done = outside.get_trial(trial._trial_id)
    assert done.state == TrialState.COMPLETE and done.values == [0.9, 123.0]
    assert done.user_attrs["accuracy"] == 0.9 and done.datetime_complete is not None
    assert study._storage.get_trial(trial._trial_id).datetime_complete == done.datetime_complete


def test_a_failed_trial_keeps_what_it_held(url):
    study = _study(url)
    trial = study.ask()
    hold(trial)
    trial.suggest_int("width", 8, 64)
    trial.set_user_attr("fail_reason", "out of memory")
    study.tell(trial, state=TrialState.FAIL)
    done = _outside(url).get_trial(trial._trial_id)
    assert done.state == TrialState.FAIL and "width" in done.params and done.user_attrs["fail_reason"]


def test_mistakes_fail_where_they_are_made(url):
    study = _study(url)
    study.get_trials()
    trial = study.ask()
    hold(trial)
    with pytest.raises(TypeError):
        trial.set_user_attr("bad", object())  # not JSON: at once, not at the next flush
    with pytest.raises(ValueError):
        trial.suggest_categorical("width", ["a", "b"])  # incompatible with the study's distribution
    trial.suggest_int("width", 8, 64)
    study.tell(trial, [0.6, 2.0])
    assert _outside(url).get_trial(trial._trial_id).params.keys() == {"width"}
    trial = study.ask()
    hold(trial)
    trial.suggest_int("depth", 1, 4)  # a name the study has not seen: checked by the database, at once
    study.tell(trial, [0.6, 2.0])
    assert _outside(url).get_trial(trial._trial_id).params.keys() == {"depth"}


def test_a_trial_finished_elsewhere_is_not_overwritten(url):
    study = _study(url)
    trial = study.ask()
    hold(trial)
    trial.suggest_int("width", 8, 64)
    flush(trial)
    _outside(url).set_trial_state_values(trial._trial_id, TrialState.FAIL)  # e.g. failed as heartbeat-stale
    trial.set_user_attr("late", True)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        study._storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [1.0, 1.0])
    done = _outside(url).get_trial(trial._trial_id)
    assert done.state == TrialState.FAIL and "late" not in done.user_attrs


def test_queued_trials_are_taken_and_finished(url):
    study = _study(url)
    study.enqueue_trial({"width": 16})
    trial = study.ask()
    hold(trial)
    assert trial.suggest_int("width", 8, 64) == 16
    study.tell(trial, [0.7, 16.0])
    done = _outside(url).get_trial(trial._trial_id)
    assert done.state == TrialState.COMPLETE and done.params == {"width": 16}


def test_a_sampled_study_writes_few_transactions_per_trial(tmp_path):
    """nano-bench trials (no training): the runner's whole per-trial write path, counted in commits."""
    url = f"sqlite:///{tmp_path / 'count.db'}"
    spec = nasopt.StudySpec(name="count", space=NanoSpace(), dataset="nanobench",
                            objectives={"accuracy": "maximize", "params": "minimize"},
                            sampler=optuna.samplers.RandomSampler(seed=0), n_trials=60)
    writes, wrote = [0], [False]  # transactions that wrote something (reads commit too)

    def statement(_conn, _cursor, sql, *_args):
        wrote[0] = wrote[0] or sql.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")

    def commit(_conn):
        writes[0] += wrote[0]
        wrote[0] = False

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", statement)
    sa.event.listen(sa.engine.Engine, "commit", commit)
    try:
        study = nasopt.run(spec, storage=url, progress=False)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", statement)
        sa.event.remove(sa.engine.Engine, "commit", commit)
    trials = study.get_trials()
    assert len(trials) == 60 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(len(t.params) == 4 and "arch" in t.user_attrs and "curve" in t.user_attrs for t in trials)
    # a table look-up draws no picture, and neither does a repeat of one (it used to, at ~8 ms each)
    assert [t for t in trials if "reused_from" in t.user_attrs]
    assert not [t for t in trials if "picture_artifact" in t.user_attrs]
    # create, params (+ worker + the first heartbeat), result (+ attrs, values, state): 3 per trial (about
    # 12 before the write-behind); creating the study adds a few, and claiming the SQLite study for this
    # process (check_single_process) and releasing it at the end two more
    assert writes[0] <= 3 * 60 + 12, writes[0]


def test_another_worker_sees_states_at_once_and_params_as_soon_as_they_exist(url, monkeypatch):
    a, b = _study(url), optuna.load_study(study_name="buffer", storage=BufferedStorage(open_storage(url, heartbeat=False)))
    monkeypatch.setattr("nasopt.storage._fast._cache.COALESCE", 0.0)
    trial = a.ask()
    hold(trial)

    def seen() -> optuna.trial.FrozenTrial:
        return next(t for t in b.get_trials(deepcopy=False) if t.number == trial.number)

    assert seen().state == TrialState.RUNNING and seen().params == {}
    trial.suggest_int("width", 8, 64)
    flush(trial)
    assert seen().params == trial.params  # read again: it had no params when last read
    trial.set_user_attr("curve", [0.5])
    flush(trial)
    monkeypatch.setattr("nasopt.storage._fast._cache.REFRESH", 3600.0)
    assert "curve" not in seen().user_attrs  # a running trial's attributes may lag (by REFRESH)...
    monkeypatch.setattr("nasopt.storage._fast._cache.REFRESH", 0.0)
    assert seen().user_attrs["curve"] == [0.5]  # ...and are read again after it
    monkeypatch.setattr("nasopt.storage._fast._cache.REFRESH", 3600.0)
    a.tell(trial, [0.8, 20.0])
    done = seen()  # a state change is read at once, with everything written with it
    assert done.state == TrialState.COMPLETE and done.values == [0.8, 20.0] and done.user_attrs["curve"] == [0.5]
    assert [t.number for t in b.get_trials(deepcopy=False)] == [t.number for t in a.get_trials(deepcopy=False)]


def test_trials_are_numbered_like_optunas_whoever_creates_them(url, zone):
    """`create_trial` (two statements) and Optuna's own `create_new_trial` (queued trials, other tools)
    share one numbering: the trials' count in the study, under the study row's lock."""
    study = _study(url)  # trial 0 came from a plain Optuna storage
    outside = optuna.load_study(study_name="buffer", storage=_outside(url))
    numbers = [study.ask().number, outside.ask().number]
    study.enqueue_trial({"width": 16})  # Optuna's path (a template)
    numbers += [study.ask().number, study.ask().number]
    assert numbers == [1, 2, 3, 4]
    seen = {t.number: t for t in outside.get_trials()}
    assert sorted(seen) == [0, 1, 2, 3, 4] and seen[1].state == TrialState.RUNNING
    own = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(study._study_id, 4))
    assert own.datetime_start == seen[4].datetime_start and own.params == seen[4].params == {}


def _heartbeats(url: str) -> dict[int, object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT trial_id, heartbeat FROM trial_heartbeats")).all())
    finally:
        engine.dispose()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_the_first_heartbeat_goes_out_with_the_first_flush(url):
    storage = BufferedStorage(open_storage(url))  # with heartbeats, as the runner opens it
    study = optuna.create_study(storage=storage, study_name="beats", directions=["maximize"])
    trial = study.ask()
    hold(trial)
    commits = _commits(storage)
    storage.record_heartbeat(trial._trial_id)  # what Optuna's heartbeat thread does when the trial starts
    assert trial._trial_id not in _heartbeats(url) and commits[0] == 0  # not a transaction of its own...
    trial.set_user_attr("arch", "x")
    flush(trial)
    assert commits[0] == 1 and trial._trial_id in _heartbeats(url)  # ...but part of the first flush
    first = _heartbeats(url)[trial._trial_id]
    storage.record_heartbeat(trial._trial_id)  # the thread's next beat, an interval later: written at once
    assert commits[0] == 2 and _heartbeats(url)[trial._trial_id] >= first
    study.tell(trial, [0.5])

    unheld = study.ask()  # not held (a gradient trial): the first beat waits for its second one
    storage.record_heartbeat(unheld._trial_id)
    assert unheld._trial_id not in _heartbeats(url)
    storage.record_heartbeat(unheld._trial_id)
    assert unheld._trial_id in _heartbeats(url)
    study.tell(unheld, [0.5])


def test_a_trial_gone_silent_on_another_machine_is_failed_and_retried(tmp_path, pg_url):
    """Heartbeat-stale: a RUNNING trial of a worker on another host whose heartbeat is older than the
    grace period is failed by the next `nasopt run` and retried once with the same params."""
    spec = dict(name="silent", space=NanoSpace(), dataset="nanobench",
                objectives={"accuracy": "maximize", "params": "minimize"},
                sampler=optuna.samplers.RandomSampler(seed=0))
    nasopt.run(nasopt.StudySpec(**spec, n_trials=2), storage=pg_url, progress=False)
    outside = optuna.load_study(study_name="silent", storage=_outside(pg_url))
    lost = outside.ask()  # a worker elsewhere started a trial, then its machine went away
    for name, distribution in NanoSpace().distributions().items():
        lost.suggest_categorical(name, distribution.choices) if hasattr(distribution, "choices") else \
            lost.suggest_int(name, distribution.low, distribution.high)
    outside._storage.set_trial_system_attr(lost._trial_id, "nasopt:worker", {"host": "elsewhere", "pid": 1})
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO trial_heartbeats (trial_id, heartbeat) "
                                 "VALUES (:id, now() - interval '1 hour')"), {"id": lost._trial_id})
    finally:
        engine.dispose()
    # (without the stale check the workers would wait for that trial: the timeout ends the test instead)
    study = nasopt.run(nasopt.StudySpec(**spec, n_trials=4), storage=pg_url, progress=False, timeout=60)
    trials = study.get_trials()
    failed = trials[lost.number]
    assert failed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == lost.params
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_trials_read_in_full_are_the_trials_optuna_reads(url, zone, monkeypatch):
    """A worker's read of the study (`nasopt.storage._fast._load`: Core, two statements) gives what Optuna's own read
    (ORM) gives, field for field: a fresh reader, and a reader that follows the study step by step."""
    monkeypatch.setattr("nasopt.storage._fast._cache.COALESCE", 0.0)
    study = _study(url)
    outside = _outside(url)
    follower = BufferedStorage(open_storage(url, heartbeat=False))

    def same(study_id: int) -> None:
        for reader in (follower, BufferedStorage(open_storage(url, heartbeat=False))):
            ours, theirs = reader.get_all_trials(study_id), outside.get_all_trials(study_id)
            assert [t.number for t in ours] == [t.number for t in theirs]
            for a, b in zip(ours, theirs, strict=True):
                for name in ("state", "values", "datetime_start", "datetime_complete", "params", "distributions",
                             "user_attrs", "system_attrs"):
                    assert getattr(a, name) == getattr(b, name), (a.number, name)
                assert list(a.params) == list(b.params)  # in the order they were suggested
                assert str(a.intermediate_values) == str(b.intermediate_values)  # nan == nan as text

    t = study.ask()
    same(study._study_id)  # running, nothing written yet
    t.suggest_float("lr", 1e-4, 1.0, log=True)
    t.suggest_categorical("op", ["conv3x3", "skip"])
    t.set_user_attr("curve", [{"epoch": 1, "val_acc": 0.5}])
    study.tell(t, [float("inf"), -1.5])
    single = optuna.create_study(storage=study._storage, study_name="single")
    s = single.ask()
    s.suggest_int("width", 8, 64, step=8)
    s.report(0.25, 1)
    s.report(float("nan"), 2)
    same(single._study_id)  # running, with params and intermediate values
    single.tell(s, 0.3)
    study.ask()  # running, no params
    study.enqueue_trial({"width": 16}, user_attrs={"queued": True})  # waiting
    pruned = study.ask()
    pruned.storage.set_trial_system_attr(pruned._trial_id, "nasopt:worker", {"host": "h", "pid": 2})
    study.tell(pruned, state=TrialState.PRUNED)
    for study_id in (study._study_id, single._study_id):
        same(study_id)


def test_an_sqlite_without_returning_creates_trials_the_optuna_way(tmp_path, monkeypatch):
    """SQLite before 3.35 has no INSERT ... RETURNING: trials are then created by Optuna's own code."""
    import sqlite3.dbapi2

    monkeypatch.setattr(sqlite3.dbapi2, "sqlite_version_info", (3, 31, 1))
    from nasopt.storage._fast._batch import create_trial

    study = _study(f"sqlite:///{tmp_path / 'old.db'}")
    assert create_trial(study._storage._backend, study._study_id) is None  # declined: Optuna's path
    trials = [study.ask() for _ in range(3)]
    assert [t.number for t in trials] == [1, 2, 3]
    study.tell(trials[0], [0.5, 1.0])
    assert [t.number for t in _outside(f"sqlite:///{tmp_path / 'old.db'}").get_all_trials(study._study_id)] == [0, 1, 2, 3]
