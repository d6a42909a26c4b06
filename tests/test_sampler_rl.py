"""RLSampler: Optuna's reusable sampler tests, the reward rules, learning from the study (replayable in a
new process), the space's define-by-run walk, and a real comparison with random search."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.study import StudyDirection
from optuna.testing.pytest_samplers import BasicSamplerTestCase, MultiObjectiveSamplerTestCase
from optuna.trial import TrialState, create_trial

from nasopt import UserError
from nasopt.samplers import SAMPLERS, RLSampler, make_sampler
from nasopt.samplers._rl import ARCH_KEY, _rewards
from nasopt.search_spaces.layers import LayersSpace
from nasopt.search_spaces.nano import NanoSpace

pytestmark = pytest.mark.usefixtures("one_thread")


class TestRLSampler(BasicSamplerTestCase, MultiObjectiveSamplerTestCase):
    # batch_size=1: the controller updates after every finished trial, so the tests exercise learning
    @pytest.fixture
    def sampler(self):
        return lambda: RLSampler(seed=0, batch_size=1)


CHOICES = tuple(range(4))


def categorical_objective(target: tuple[int, ...]):
    """How many of the four-way decisions match a hidden target (maximize)."""
    def objective(trial: optuna.Trial) -> float:
        return float(sum(trial.suggest_categorical(f"x{i}", CHOICES) == t for i, t in enumerate(target)))
    return objective


def run(sampler, objective, n_trials, directions=("maximize",)) -> optuna.Study:
    study = optuna.create_study(sampler=sampler, directions=list(directions))
    study.optimize(objective, n_trials=n_trials)
    return study


def trial(number, values, state=TrialState.COMPLETE, constraints=None):
    t = create_trial(state=state, values=values if state == TrialState.COMPLETE else None, params={},
                     distributions={}, system_attrs={f"constraints:{k}": v for k, v in (constraints or {}).items()})
    t.number = number
    return t


# ------------------------------------------------------------------------------------------ rewards

def test_single_objective_rewards_are_normalised_best_one():
    trials = [trial(0, [0.2]), trial(1, [0.8]), trial(2, [0.5]), trial(3, None, TrialState.PRUNED)]
    up = _rewards(trials, [StudyDirection.MAXIMIZE], seed=0)
    assert up == pytest.approx({0: 0.0, 1: 1.0, 2: 0.5, 3: 0.0})
    down = _rewards(trials, [StudyDirection.MINIMIZE], seed=0)
    assert down == pytest.approx({0: 1.0, 1: 0.0, 2: 0.5, 3: 0.0})
    infeasible = _rewards(trials[:2] + [trial(4, [0.9], constraints={"params": 1.0})], [StudyDirection.MAXIMIZE], seed=0)
    assert infeasible[4] == 0.0 and infeasible[1] == 1.0  # a broken constraint earns nothing
    assert _rewards([trial(0, [math.inf]), trial(1, [1.0]), trial(2, [0.0])],
                    [StudyDirection.MAXIMIZE], 0) == pytest.approx({0: 1.0, 1: 1.0, 2: 0.0})


def test_multi_objective_reward_is_a_random_chebyshev_scalarisation():
    directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    front = [trial(i, [float(i), float(i)]) for i in range(5)]  # all Pareto-optimal: a trade-off line
    dominated = trial(5, [0.0, 4.0])  # worst in both
    ideal = trial(6, [4.0, 0.0])  # best in both
    rewards = _rewards(front + [dominated, ideal], directions, seed=0)
    assert all(-0.05 <= r <= 1.0 for r in rewards.values())
    assert rewards[6] == pytest.approx(1.0)  # the ideal point, whatever the weights
    assert all(rewards[5] < rewards[i] < rewards[6] for i in range(5))  # the dominated one is last
    assert rewards[5] <= 0.95 - 0.5  # 1 - max(w) - 0.05 with two weights summing to 1
    assert rewards == _rewards(front + [dominated, ideal], directions, seed=0)  # weights seeded per trial
    assert rewards != _rewards(front + [dominated, ideal], directions, seed=1)


# ------------------------------------------------------------------------------------------ learning

def test_rl_beats_random_search():
    """On a 10 x 4-way matching problem, the controller's best after 120 trials beats random search's."""
    rng = np.random.RandomState(0)
    rl, rand = [], []
    for seed in range(3):
        objective = categorical_objective(tuple(rng.randint(4, size=10)))
        rl.append(run(RLSampler(seed=seed), objective, 120).best_value)
        rand.append(run(optuna.samplers.RandomSampler(seed=seed), objective, 120).best_value)
    assert np.mean(rl) >= np.mean(rand) + 2, (rl, rand)


def test_same_seed_same_study_other_seed_other_study():
    def params(seed):
        return [t.params for t in run(RLSampler(NanoSpace(), seed=seed), lambda t: len(NanoSpace().suggest(t)),
                                      15).trials]

    assert params(3) == params(3)
    assert params(3) != params(4)


def test_the_policy_is_a_function_of_the_study():
    """A fresh sampler (another process) replays the finished trials into the same controller, and answers
    a trial's remaining parameters from the architecture stored for it."""
    space = NanoSpace()
    study = run(RLSampler(space, seed=0), lambda t: float(sum(v == "skip" for v in space.suggest(t).values())), 12)
    first = study.sampler
    first.learn(study)
    again = RLSampler(space, seed=0)
    again.learn(study)
    arch = {f"pos{i}.op": "skip" for i in range(4)}
    untrained = RLSampler(space, seed=0).learn(optuna.create_study())
    with torch.no_grad():
        learned = float(first._controller.log_prob(arch))
        assert float(again._controller.log_prob(arch)) == pytest.approx(learned, abs=1e-5)
        assert learned > float(untrained.log_prob(arch)) + 0.2  # it learned towards the reward
    t = study.ask()
    value = t.suggest_categorical("pos0.op", space.ops)
    study.sampler = RLSampler(space, seed=99)
    rest = {f"pos{i}.op": t.suggest_categorical(f"pos{i}.op", space.ops) for i in range(1, 4)}
    assert {"pos0.op": value, **rest} == study.trials[-1].system_attrs[ARCH_KEY]


def test_conditional_space_is_walked_through_its_suggest():
    """Variable depth: the stored architecture is exactly what the space's suggest records."""
    space = LayersSpace(max_layers=4)
    study = run(RLSampler(space, seed=0, batch_size=1), lambda t: float(space.suggest(t)["n_layers"]), 15)
    for t in study.trials:
        assert t.params == t.system_attrs[ARCH_KEY]
        assert set(t.params) <= set(space.distributions())


def test_without_a_space_new_names_rebuild_the_controller():
    sampler = RLSampler(seed=0, batch_size=1)
    study = run(sampler, lambda t: float(t.suggest_categorical("a", (0, 1))), 3)
    assert study.trials[0].system_attrs[ARCH_KEY] == {}  # nothing seen yet: random
    assert set(study.trials[-1].system_attrs[ARCH_KEY]) == {"a"}
    study.optimize(lambda t: float(t.suggest_categorical("a", (0, 1)) + t.suggest_int("b", 0, 3)), n_trials=2)
    assert set(study.trials[-1].system_attrs[ARCH_KEY]) == {"a", "b"}
    assert sampler._learned == {t.number for t in study.trials[:-1]}  # relearned every finished trial


def test_trials_of_another_space_are_not_learned_from():
    sampler = RLSampler(NanoSpace(), seed=0, batch_size=1)
    study = optuna.create_study(sampler=sampler)
    study.add_trial(create_trial(value=1.0, params={"x": 1}, distributions={"x": CategoricalDistribution((1, 2))}))
    sampler.learn(study)  # does not raise
    assert sampler._scored(study.trials[0]) is None
    assert not bool(sampler._controller.baseline.isfinite())  # no update happened


# ------------------------------------------------------------------------------------------ by name

def test_registered_by_name():
    assert "rl" in SAMPLERS
    sampler = make_sampler("rl", seed=0, n_objectives=2, space=NanoSpace())
    assert isinstance(sampler, RLSampler) and isinstance(sampler.space, NanoSpace)


@pytest.mark.parametrize(("kwargs", "rule"), [
    ({"batch_size": 0}, "batch_size >= 1"),
    ({"lr": 0.0}, "lr > 0"),
    ({"bins": 1}, "bins >= 2"),
    ({"space": "nano"}, "needs a search space"),
])
def test_bad_arguments_name_the_rule(kwargs, rule):
    with pytest.raises(UserError, match=rule):
        RLSampler(**kwargs)


def test_reseed_rng_changes_the_stream():
    a, b = RLSampler(NanoSpace(), seed=0), RLSampler(NanoSpace(), seed=0)
    b.reseed_rng()

    def draws(sampler):
        study = optuna.create_study(sampler=sampler)
        return [[t.suggest_categorical(f"pos{i}.op", NanoSpace().ops) for i in range(4)]
                for t in (study.ask() for _ in range(3))]

    assert draws(a) != draws(b)
