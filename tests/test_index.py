"""The runner's study index (nasopt.study._index): the budget counts and the duplicate lookup, kept up to date
from the new and changed trials only, must equal a recount over all trials at every step."""

from __future__ import annotations

import random

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from nasopt.keys import STRATEGY_KEY
from nasopt.storage import retry_callback
from nasopt.study._index import StudyIndex

OPS = CategoricalDistribution(["conv3x3", "skip", "zero"])


def recount(trials: list[FrozenTrial]) -> tuple[int, int, int]:
    """The budget as the docs define it, counted from scratch."""
    sampled = [t for t in trials if STRATEGY_KEY not in t.system_attrs]
    retried = {n for t in sampled for n in t.system_attrs.get("retry_history", [])}
    finished = sum(1 for t in sampled if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   or (t.state == TrialState.FAIL and t.number not in retried))
    return (finished, sum(t.state == TrialState.RUNNING for t in sampled),
            sum(t.state == TrialState.WAITING for t in sampled))


def first_evaluation(trials: list[FrozenTrial], params: dict, number: int) -> FrozenTrial | None:
    """The first sampled evaluation of `params` (a gradient method's trial is not one: it never counts)."""
    for t in trials:
        if (t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.number != number and t.params == params
                and "reused_from" not in t.user_attrs and STRATEGY_KEY not in t.system_attrs):
            return t
    return None


def test_the_index_matches_a_recount_through_a_random_study():
    rng = random.Random(0)
    study = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    index = StudyIndex()
    running: list[optuna.Trial] = []
    for step in range(300):
        action = rng.random()
        if action < 0.4 or not running:
            trial = study.ask()
            trial.suggest_categorical("op", OPS.choices)
            trial.suggest_int("width", 1, 3)
            if rng.random() < 0.1:
                trial.storage.set_trial_system_attr(trial._trial_id, STRATEGY_KEY, "darts")
            if rng.random() < 0.1:
                trial.set_user_attr("reused_from", 0)
            running.append(trial)
        else:
            trial = running.pop(rng.randrange(len(running)))
            ending = rng.random()
            if ending < 0.6:
                study.tell(trial, rng.random())
            elif ending < 0.8:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, state=TrialState.FAIL)
                if rng.random() < 0.5:  # queued again: WAITING, then run as a retry
                    retry_callback()(study, study._storage.get_trial(trial._trial_id))
        trials = study.get_trials(deepcopy=False)
        assert index.update(trials).budget() == recount(trials), step
        for params in ({"op": op, "width": w} for op in OPS.choices for w in (1, 2, 3)):
            found = index.evaluated(params, -1)
            expected = first_evaluation(trials, params, -1)
            assert (found.number if found else None) == (expected.number if expected else None), (step, params)
