"""REASampler: Optuna's reusable sampler tests, plus the evolution rules (tournament, one mutation,
ageing, crossover, multi-objective order, reproducibility) and a real comparison with random search."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.testing.pytest_samplers import BasicSamplerTestCase, MultiObjectiveSamplerTestCase
from optuna.trial import TrialState

from nasopt import UserError
from nasopt.samplers import SAMPLERS, REASampler, make_sampler
from nasopt.samplers._rea import CHILD_KEY, _fitness, _mutate_value


class TestREASampler(BasicSamplerTestCase, MultiObjectiveSamplerTestCase):
    # a small population, so the evolution (not only the random warm-up) runs in these tests
    @pytest.fixture
    def sampler(self):
        return lambda: REASampler(population_size=3, sample_size=2, seed=0)


# --------------------------------------------------------------------------------------- helpers

CHOICES = tuple(range(4))
N_DECISIONS = 10


def categorical_objective(target: tuple[int, ...]):
    """How many of 10 four-way decisions match a hidden target (maximize; 10 is the optimum)."""
    def objective(trial: optuna.Trial) -> float:
        return float(sum(trial.suggest_categorical(f"x{i}", CHOICES) == t for i, t in enumerate(target)))
    return objective


def conditional_objective(trial: optuna.Trial) -> float:
    """A define-by-run toy: a depth, then per-layer kinds with kind-specific decisions."""
    depth = trial.suggest_int("depth", 1, 4)
    score = 0.0
    for i in range(depth):
        kind = trial.suggest_categorical(f"l{i}.kind", ("a", "b", "c"))
        if kind == "a":
            score += trial.suggest_categorical(f"l{i}.width", (1, 2, 3))
        elif kind == "b":
            score += trial.suggest_float(f"l{i}.rate", 0.0, 1.0)
    return score


def run(sampler, objective, n_trials, directions=("maximize",)) -> optuna.Study:
    study = optuna.create_study(sampler=sampler, directions=list(directions))
    study.optimize(objective, n_trials=n_trials)
    return study


def record(trial) -> dict:
    return trial.system_attrs[CHILD_KEY]


# --------------------------------------------------------------------------------- the evolution

def test_random_until_the_population_is_filled_then_children_of_the_population():
    study = run(REASampler(population_size=6, sample_size=3, seed=0), categorical_objective((0,) * 10), 15)
    for t in study.trials[:6]:
        assert record(t)["parents"] == [] and record(t)["mutated"] is None
    for t in study.trials[6:]:
        assert record(t)["parents"] and record(t)["mutated"] in t.params


def test_child_differs_from_its_parent_in_exactly_one_active_decision():
    study = run(REASampler(population_size=5, sample_size=2, crossover_prob=0.0, seed=1),
                conditional_objective, 60)
    evolved = [t for t in study.trials if record(t)["parents"]]
    assert len(evolved) == 55
    structural = 0
    for t in evolved:
        (number,) = record(t)["parents"]
        parent = study.trials[number]
        common = set(parent.params) & set(t.params)
        changed = [n for n in common if parent.params[n] != t.params[n]]
        assert changed == [record(t)["mutated"]], (parent.params, t.params)
        structural += set(parent.params) != set(t.params)
        if record(t)["mutated"] == "depth":  # add or remove exactly one layer
            assert abs(t.params["depth"] - parent.params["depth"]) == 1
    assert structural > 0  # the test did see mutations that add/remove decisions


def test_parent_always_comes_from_the_last_population_size_trials():
    """Ageing: the population is the most recent COMPLETE trials; the best dies when it gets old."""
    P = 4

    def objective(trial):  # trial 0 is by far the best, and PRUNED trials never join the population
        x = trial.suggest_categorical("x", CHOICES)
        y = trial.suggest_categorical("y", CHOICES)
        if trial.number % 5 == 4:
            raise optuna.TrialPruned()
        return 100.0 if trial.number == 0 else float(x + y)

    study = run(REASampler(population_size=P, sample_size=P, crossover_prob=0.5, seed=3), objective, 40)
    saw_crossover = False
    for t in study.trials:
        complete_before = [s.number for s in study.trials[: t.number] if s.state == TrialState.COMPLETE]
        parents = record(t)["parents"]
        if len(complete_before) < P:
            assert parents == []
            continue
        assert parents and set(parents) <= set(complete_before[-P:]), (t.number, parents, complete_before[-P:])
        saw_crossover |= len(parents) == 2
    assert saw_crossover
    # a full tournament (sample_size == population_size) always picks the best living member: the
    # overall best, trial 0, is a parent only while it is among the last P complete trials
    assert any(0 in record(t)["parents"] for t in study.trials)
    assert all(0 not in record(t)["parents"] for t in study.trials[P + 2:])


def test_same_seed_same_study_other_seed_other_study():
    def params(seed):
        study = run(REASampler(population_size=5, sample_size=2, seed=seed), conditional_objective, 25)
        return [t.params for t in study.trials]

    assert params(7) == params(7)
    assert params(7) != params(8)


def test_rea_beats_random_search_on_average():
    """Over 5 seeds and 5 hidden targets, REA's best after 120 trials beats random search's."""
    rng = np.random.RandomState(0)
    rea, rand = [], []
    for seed in range(5):
        objective = categorical_objective(tuple(rng.randint(4, size=N_DECISIONS)))
        rea.append(run(REASampler(population_size=20, sample_size=5, seed=seed), objective, 120).best_value)
        rand.append(run(optuna.samplers.RandomSampler(seed=seed), objective, 120).best_value)
    assert np.mean(rea) >= np.mean(rand) + 1.5, (rea, rand)
    assert sum(a > b for a, b in zip(rea, rand, strict=True)) >= 4, (rea, rand)


def test_the_child_survives_in_storage_for_another_sampler_instance():
    """The child is decided once per trial and stored, so a fresh process answers the same values."""
    study = optuna.create_study(sampler=REASampler(population_size=3, sample_size=2, crossover_prob=0.0, seed=0),
                                direction="maximize")
    study.optimize(categorical_objective((0,) * 10), n_trials=5)
    trial = study.ask()
    first = trial.suggest_categorical("x0", CHOICES)
    study.sampler = REASampler(population_size=3, sample_size=2, seed=99)  # as in another worker
    rest = {f"x{i}": trial.suggest_categorical(f"x{i}", CHOICES) for i in range(1, N_DECISIONS)}
    child = study.trials[-1].system_attrs[CHILD_KEY]["params"]
    assert {"x0": first, **rest} == child


def test_out_of_distribution_and_unknown_names_fall_back_to_random():
    sampler = REASampler(population_size=2, sample_size=1, crossover_prob=0.0, seed=0)
    study = optuna.create_study(sampler=sampler)
    for v in (1, 2):
        study.enqueue_trial({"x": v})
        study.optimize(lambda t: t.suggest_int("x", 1, 3), n_trials=1)
    trial = study.ask()
    assert trial.suggest_int("x", 10, 20) in range(10, 21)  # parent's value lies outside the new range
    assert trial.suggest_categorical("new", ("a", "b")) in ("a", "b")


# --------------------------------------------------------------------------------- multi-objective

def test_multi_objective_tournament_prefers_rank_then_crowding():
    trials = [optuna.trial.create_trial(values=v, params={}, distributions={})
              for v in ([0.0, 3.0], [1.0, 1.0], [3.0, 0.0], [2.0, 2.0], [2.5, 2.5], [0.5, 2.0])]
    keys = _fitness(trials, [StudyDirection.MINIMIZE, StudyDirection.MINIMIZE])
    ranks = [k[0] for k in keys]
    assert ranks == [0, 0, 0, 1, 2, 0]
    # within the first front the boundary points are infinitely crowded, (1, 1) sits between
    assert keys[0][1] == keys[2][1] == -np.inf and np.isfinite(keys[1][1])
    maximize = _fitness(trials, [StudyDirection.MAXIMIZE, StudyDirection.MAXIMIZE])
    assert [k[0] for k in maximize][4] == 0  # (2.5, 2.5) is the best when maximizing


def test_multi_objective_study_evolves_from_the_pareto_side():
    def objective(trial):
        x = [trial.suggest_categorical(f"x{i}", CHOICES) for i in range(6)]
        return float(sum(x)), float(sum(3 - v for v in x[:3]) + sum(x[3:]))

    study = run(REASampler(population_size=8, sample_size=4, seed=0), objective, 40,
                directions=("maximize", "minimize"))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert sum(bool(record(t)["parents"]) for t in study.trials) == 32
    best = max(t.values[0] - t.values[1] for t in study.best_trials)
    assert best > 0  # moved towards x[:3] high and x[3:] low


# ------------------------------------------------------------------------------------ the mutation

@pytest.mark.parametrize("dist", [
    CategoricalDistribution((1, "a", None)), CategoricalDistribution((False, True)),
    IntDistribution(1, 8), IntDistribution(0, 10, step=2), IntDistribution(1, 100, log=True),
    FloatDistribution(0.0, 1.0), FloatDistribution(1e-5, 1.0, log=True), FloatDistribution(0.0, 1.0, step=0.5),
])
def test_mutation_returns_another_value_of_the_distribution(dist):
    rng, draw = np.random.RandomState(0), optuna.samplers.RandomSampler(seed=0)
    for _ in range(50):
        value = draw.sample_independent(None, None, "x", dist)  # the random sampler needs no study
        new = _mutate_value(value, dist, rng)
        assert new != value
        assert dist._contains(dist.to_internal_repr(new))
        if isinstance(dist, IntDistribution) and not dist.log:
            assert abs(new - value) == dist.step  # a neighbour


@pytest.mark.parametrize(("kwargs", "rule"), [
    ({"population_size": 0}, "population_size >= 1"),
    ({"population_size": 4, "sample_size": 5}, "sample_size <= population_size"),
    ({"sample_size": 0}, "1 <= sample_size"),
    ({"crossover_prob": 1.5}, "crossover_prob <= 1"),
])
def test_bad_arguments_name_the_rule(kwargs, rule):
    with pytest.raises(UserError, match=rule):
        REASampler(**kwargs)


def test_registered_by_name():
    assert "rea" in SAMPLERS
    sampler = make_sampler("rea", seed=0, n_objectives=2)
    assert isinstance(sampler, REASampler)
    nsga2 = make_sampler("nsga2", seed=0)
    assert isinstance(nsga2, optuna.samplers.NSGAIISampler)


def test_reseed_rng_changes_the_stream():
    a, b = REASampler(seed=0), REASampler(seed=0)
    b.reseed_rng()
    assert a._rng.randint(1 << 30) != b._rng.randint(1 << 30)
