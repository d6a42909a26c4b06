"""Results as data: `nasopt.trials_frame`, `nasopt.pareto_front`, plain SQL on the SQLite file, reuse of
already evaluated architectures, and hard constraints checked before training.

One tiny multi-objective study is run once through the public API (`nasopt.run`) into a real SQLite file:
6 sampled trials under `constraints={"params": 5000}`, then two enqueued repeats of stored architectures
(one feasible, one over the limit).
"""

from __future__ import annotations

import json
import runpy
import sqlite3
import warnings
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

import nasopt

STUDY = Path(__file__).parent / "studies" / "tiny_mobile.py"
LIMIT = 5000  # params: RandomSampler(seed=0) proposes archs of 12802, 4306, 4202, 1602, 6954, 5978 params

# ---------------------------------------------------------------------------------------------- plain SQL
# The README's recipe: an nasopt study read with nothing but SQL and pandas. Optuna stores one row per
# (trial, objective) in trial_values and per (trial, decision) in trial_params; a categorical decision is
# stored as the INDEX of the choice in its distribution_json, so it is decoded in Python.

METRIC_NAMES_SQL = """
SELECT a.value_json
FROM study_system_attributes AS a
JOIN studies AS s USING (study_id)
WHERE s.study_name = :study AND a.key = 'study:metric_names'
"""

VALUES_SQL = """
SELECT t.number, t.state, v.objective, v.value
FROM trials AS t
JOIN studies AS s USING (study_id)
LEFT JOIN trial_values AS v USING (trial_id)
WHERE s.study_name = :study
ORDER BY t.number, v.objective
"""

PARAMS_SQL = """
SELECT t.number, p.param_name, p.param_value, p.distribution_json
FROM trials AS t
JOIN studies AS s USING (study_id)
JOIN trial_params AS p USING (trial_id)
WHERE s.study_name = :study
"""

ARCH_SQL = """
SELECT t.number, a.value_json AS arch
FROM trials AS t
JOIN studies AS s USING (study_id)
JOIN trial_user_attributes AS a USING (trial_id)
WHERE s.study_name = :study AND a.key = 'arch'
"""


def decode_param(value: float, distribution_json: str) -> object:
    """The choice itself from Optuna's stored float (an index for categorical decisions)."""
    dist = json.loads(distribution_json)
    if dist["name"] == "CategoricalDistribution":
        return dist["attributes"]["choices"][int(value)]
    return int(value) if dist["name"] == "IntDistribution" else value


def read_study_sql(path: Path, study: str) -> pd.DataFrame:
    """One row per trial: number, state, one column per objective (by metric name), per decision, arch."""
    with sqlite3.connect(path) as con:
        names = json.loads(pd.read_sql(METRIC_NAMES_SQL, con, params={"study": study}).iloc[0, 0])
        values = pd.read_sql(VALUES_SQL, con, params={"study": study})
        params = pd.read_sql(PARAMS_SQL, con, params={"study": study})
        arch = pd.read_sql(ARCH_SQL, con, params={"study": study})
    frame = values[["number", "state"]].drop_duplicates().set_index("number")
    objectives = values.dropna(subset=["objective"]).pivot(index="number", columns="objective", values="value")
    frame = frame.join(objectives.rename(columns=lambda i: names[int(i)]))
    params["choice"] = [decode_param(v, d) for v, d in zip(params.param_value, params.distribution_json,
                                                            strict=True)]
    frame = frame.join(params.pivot(index="number", columns="param_name", values="choice"))
    frame = frame.join(arch.set_index("number")["arch"].map(json.loads))
    return frame.reset_index()


# ---------------------------------------------------------------------------------------------- the study

class Untold(optuna.samplers.RandomSampler):
    """Takes the study's limits and ignores them (`use_limits`, see nasopt.samplers.with_limits): it proposes
    networks over the limit, whose rejection before training is what is tested."""

    def use_limits(self, limits: object) -> None:
        pass


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nasopt.StudySpec]:
    path = tmp_path_factory.mktemp("results") / "results.db"
    url = f"sqlite:///{path}"
    spec = runpy.run_path(str(STUDY))["study"].replace(
        sampler=Untold(seed=0), constraints={"params": LIMIT}, n_trials=6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: one thread is fastest, and leaves the other core free
    try:
        study = nasopt.run(spec, storage=url, progress=False)
        trials = study.get_trials()
        feasible = next(t for t in trials if t.state == TrialState.COMPLETE)
        oversize = next(t for t in trials if t.state == TrialState.PRUNED)
        study.enqueue_trial(feasible.params)  # -> trial 6: reuses the stored result
        study.enqueue_trial(oversize.params)  # -> trial 7: reuses the stored rejection
        nasopt.run(spec, storage=url, n_trials=8, progress=False)
    finally:
        torch.set_num_threads(threads)
    return path, spec


def load(path: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny_mobile", storage=f"sqlite:///{path}")


def test_study_has_feasible_oversize_and_reused_trials(study_db):
    trials = load(study_db[0]).get_trials()
    assert len(trials) == 8
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) >= 3 and states.count(TrialState.PRUNED) >= 2
    assert [t.number for t in trials if "reused_from" in t.user_attrs] == [6, 7]


def test_trials_frame_columns_and_values(study_db):
    path, spec = study_db
    frame = nasopt.trials_frame(f"sqlite:///{path}", "tiny_mobile")
    study = load(path)
    decisions = sorted({name for t in study.get_trials() for name in t.params})
    assert set(spec.space.distributions()) >= set(decisions) and "stage1.block0.kernel" in decisions
    expected = {"number", "state", "accuracy", "latency_ms", "params", "macs", "duration_s", "arch", *decisions}
    assert expected <= set(frame.columns)
    assert list(frame["number"]) == [t.number for t in study.get_trials()]

    for t in study.get_trials():
        row = frame.loc[t.number]
        assert row["state"] == t.state.name
        assert row["arch"] == t.user_attrs["arch"]
        assert row["macs"] == t.user_attrs["macs"]
        assert row["duration_s"] == pytest.approx(t.duration.total_seconds())
        if t.state == TrialState.COMPLETE:
            for i, name in enumerate(study.metric_names):
                assert row[name] == t.values[i], name
        for name in decisions:  # the choice itself, e.g. kernel 5 (not its index 1)
            if name in t.params:
                assert row[name] == t.params[name], name
                dist = spec.space.distributions()[name]
                assert row[name] in dist.choices if hasattr(dist, "choices") else dist.low <= row[name] <= dist.high
            else:  # a block beyond the stage's depth has no decision
                assert pd.isna(row[name]), name
    kernels = frame["stage1.block0.kernel"].dropna()
    assert set(kernels) <= {3, 5} and set(frame["width"]) <= {0.5, 1.0}


def dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    """a is no worse than b in every objective and better in one."""
    signs = [1 if d == "maximize" else -1 for d in directions]
    no_worse = all(s * x >= s * y for s, x, y in zip(signs, a, b, strict=True))
    return no_worse and any(s * x > s * y for s, x, y in zip(signs, a, b, strict=True))


def pareto_by_hand(frame: pd.DataFrame, names: list[str], directions: list[str]) -> set[int]:
    rows = frame[(frame["state"] == "COMPLETE") & (frame["feasible"] != False)]  # noqa: E712 (None = unconstrained)
    points = {int(n): [float(v) for v in rows.loc[n, names]] for n in rows.index}
    return {n for n, p in points.items() if not any(dominates(q, p, directions) for q in points.values())}


def test_pareto_front_is_the_feasible_non_dominated_complete_trials(study_db):
    path, spec = study_db
    url = f"sqlite:///{path}"
    frame = nasopt.trials_frame(url, "tiny_mobile")
    front = nasopt.pareto_front(url, "tiny_mobile")
    assert set(front["number"]) == pareto_by_hand(frame, list(spec.objectives), spec.directions)
    assert (front["state"] == "COMPLETE").all() and (front["feasible"] == True).all()  # noqa: E712
    assert list(front["accuracy"]) == sorted(front["accuracy"], reverse=True)


def test_pareto_front_drops_dominated_and_infeasible_trials(tmp_path):
    """Hand-made trials: a dominated one and an infeasible one that would otherwise be the best."""
    url = f"sqlite:///{tmp_path / 'made.db'}"
    study = optuna.create_study(study_name="made", storage=url, directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "params"])
    points = {0: ([0.9, 5000.0], -1.0), 1: ([0.8, 1000.0], -1.0), 2: ([0.8, 6000.0], -1.0),  # 2 dominated by 0
              3: ([0.99, 100.0], 7000.0), 4: ([0.9, 5000.0], 0.0)}  # 3 infeasible; 4 ties with 0
    for number, (values, constraint) in points.items():
        study.add_trial(optuna.create_trial(values=values, system_attrs={"constraints:params": constraint},
                                            user_attrs={"arch": f"arch{number}"}))
    study.add_trial(optuna.create_trial(state=TrialState.PRUNED))
    frame = nasopt.trials_frame(url, "made")
    assert list(frame["feasible"].iloc[:5]) == [True, True, True, False, True]
    front = nasopt.pareto_front(url, "made")
    assert set(front["number"]) == pareto_by_hand(frame, ["accuracy", "params"], ["maximize", "minimize"])
    assert set(front["number"]) == {0, 1, 4}


def test_plain_sql_agrees_with_trials_frame(study_db):
    path, _ = study_db
    sql = read_study_sql(path, "tiny_mobile").set_index("number", drop=False)
    frame = nasopt.trials_frame(f"sqlite:///{path}", "tiny_mobile")
    assert list(sql["number"]) == list(frame["number"])
    assert list(sql["state"]) == list(frame["state"])
    assert list(sql["arch"]) == list(frame["arch"])
    decisions = [c for c in sql.columns if c not in ("number", "state", "arch", "accuracy", "latency_ms", "params")]
    assert "width" in decisions and "stage2.block0.expand" in decisions
    for name in decisions:  # decoded choices, NaN where a trial has no such decision
        pd.testing.assert_series_equal(sql[name].astype(object), frame[name].astype(object), check_names=False,
                                       check_index=False)
    complete = frame["state"] == "COMPLETE"
    for name in ("accuracy", "latency_ms", "params"):  # pruned trials have no values in trial_values
        assert list(sql.loc[complete.values, name]) == list(frame.loc[complete, name])
        assert sql.loc[~complete.values, name].isna().all()


def test_repeated_architecture_reuses_the_stored_result(study_db):
    study = load(study_db[0])
    trials = {t.number: t for t in study.get_trials()}
    reused, source = trials[6], trials[trials[6].user_attrs["reused_from"]]
    assert reused.state == source.state == TrialState.COMPLETE
    assert reused.params == source.params and reused.values == source.values
    assert "reused_from" not in source.user_attrs
    # copied, not measured or trained again: a new measurement would give other latencies and curves;
    # the time spent is the reusing trial's own, so `timings` is not copied
    for key in ("latency", "seed", "curve", "arch"):
        assert reused.user_attrs[key] == source.user_attrs[key], key
    assert "timings" not in reused.user_attrs
    assert reused.system_attrs["constraints:params"] == source.system_attrs["constraints:params"] <= 0
    # the same architecture, the same picture: the dashboard lists the original's file for both trials
    picture = source.user_attrs["picture_artifact"]
    assert reused.user_attrs["picture_artifact"] == picture
    assert reused.system_attrs[f"artifacts:{picture}"] == source.system_attrs[f"artifacts:{picture}"]

    rejected, first = trials[7], trials[trials[7].user_attrs["reused_from"]]
    assert rejected.state == first.state == TrialState.PRUNED and rejected.params == first.params
    assert f"same architecture as trial {first.number}" in rejected.user_attrs["pruned_reason"]
    assert "constraint" in rejected.user_attrs["pruned_reason"]
    assert rejected.system_attrs["constraints:params"] == first.system_attrs["constraints:params"] > 0


def test_constraint_rejects_oversize_archs_before_training(study_db):
    trials = [t for t in load(study_db[0]).get_trials() if "reused_from" not in t.user_attrs]
    oversize = [t for t in trials if t.user_attrs["params"] > LIMIT]
    fitting = [t for t in trials if t.user_attrs["params"] <= LIMIT]
    assert oversize and fitting
    for t in oversize:
        assert t.state == TrialState.PRUNED
        assert "constraint" in t.user_attrs["pruned_reason"] and f"params={t.user_attrs['params']:,}" in \
            t.user_attrs["pruned_reason"]
        assert "curve" not in t.user_attrs and "timings" not in t.user_attrs and not t.intermediate_values
        assert t.system_attrs["constraints:params"] == t.user_attrs["params"] - LIMIT > 0
    for t in fitting:
        assert t.state == TrialState.COMPLETE and len(t.user_attrs["curve"]) == 2
        assert t.system_attrs["constraints:params"] == t.user_attrs["params"] - LIMIT <= 0
        assert t.values[2] == t.user_attrs["params"]  # the params objective
    frame = nasopt.trials_frame(f"sqlite:///{study_db[0]}", "tiny_mobile")
    assert all(frame.loc[t.number, "feasible"] == (t.user_attrs["params"] <= LIMIT) for t in trials)
