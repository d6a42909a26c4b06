"""Write-behind for the runner's own trials (nasopt._buffer): what another reader sees, and when.

Each test opens the database a second time with a plain Optuna RDBStorage, the way the dashboard,
another worker or pandas would, and checks what has reached it.
"""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

import nasopt
from nasopt._buffer import BufferedStorage, flush, hold
from nasopt.search_spaces.nano import NanoSpace
from nasopt.storage import open_storage


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'buffer.db'}"
    return request.getfixturevalue("pg_url")


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
    counter = [0]
    sa.event.listen(storage._backend.engine, "commit", lambda _conn: counter.__setitem__(0, counter[0] + 1))
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
                            sampler=optuna.samplers.RandomSampler(seed=0), n_trials=30)
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
    assert len(trials) == 30 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(len(t.params) == 4 and "arch" in t.user_attrs and "curve" in t.user_attrs for t in trials)
    # create, params (+ worker), result (+ attrs, values, state), one heartbeat: 4 per trial (about 12
    # before the write-behind); creating the study adds a few
    assert writes[0] <= 4 * 30 + 10, writes[0]


def test_another_worker_sees_states_at_once_and_params_as_soon_as_they_exist(url, monkeypatch):
    a, b = _study(url), optuna.load_study(study_name="buffer", storage=BufferedStorage(open_storage(url, heartbeat=False)))
    monkeypatch.setattr("nasopt._buffer.COALESCE", 0.0)
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
    monkeypatch.setattr("nasopt._buffer.REFRESH", 3600.0)
    assert "curve" not in seen().user_attrs  # a running trial's attributes may lag (by REFRESH)...
    monkeypatch.setattr("nasopt._buffer.REFRESH", 0.0)
    assert seen().user_attrs["curve"] == [0.5]  # ...and are read again after it
    monkeypatch.setattr("nasopt._buffer.REFRESH", 3600.0)
    a.tell(trial, [0.8, 20.0])
    done = seen()  # a state change is read at once, with everything written with it
    assert done.state == TrialState.COMPLETE and done.values == [0.8, 20.0] and done.user_attrs["curve"] == [0.5]
    assert [t.number for t in b.get_trials(deepcopy=False)] == [t.number for t in a.get_trials(deepcopy=False)]
