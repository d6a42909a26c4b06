"""Every strategy by name over every space: proposals are valid architectures of the space.

A cheap synthetic objective stands in for training (a fixed random linear score of `space.encode`),
so the test checks the sampler/space contract, not search quality (tests/test_api.py does that).
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import nasopt
from nasopt.samplers import SAMPLERS, make_sampler
from nasopt.search_spaces import SPACES, make_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

HAS_BOTORCH = importlib.util.find_spec("botorch") is not None
N_TRIALS = 12  # past the startup phase of rea, pnas and botorch (random for their first 10)


def _objective(space, n_objectives):
    weights = np.random.default_rng(0).normal(size=(n_objectives, len(space.encode(
        nasopt.space.random_arch(space, 0)))))

    def objective(trial):
        arch = space.suggest(trial)
        score = weights @ space.encode(arch)
        return tuple(float(v) for v in score) if n_objectives > 1 else float(score[0])

    return objective


def _valid(space, params):
    dists = space.distributions()
    for name, value in params.items():
        assert name in dists, name
        assert dists[name]._contains(dists[name].to_internal_repr(value)), (name, value)
    assert space.describe(params)


@pytest.mark.parametrize("space_name", list(SPACES))
@pytest.mark.parametrize("strategy", list(SAMPLERS))
@pytest.mark.parametrize("n_objectives", [1, 2])
def test_every_strategy_proposes_valid_architectures_of_every_space(strategy, space_name, n_objectives):
    if strategy == "botorch" and not HAS_BOTORCH:
        pytest.skip("botorch not installed (the bayes extra)")
    space = make_space(space_name)
    if strategy == "gp" and len(space.distributions()) > 32:
        with pytest.raises(nasopt.UserError, match="use tpe, rea or botorch"):
            make_sampler(strategy, seed=0, n_objectives=n_objectives, space=space)
        return
    sampler = make_sampler(strategy, seed=0, n_objectives=n_objectives, space=space)
    if strategy == "pnas":  # the contract, not the search quality: a small pool keeps the cell spaces quick
        from nasopt.samplers._pnas import PNASSampler

        assert isinstance(sampler, PNASSampler)
        sampler = PNASSampler(space, seed=0, n_candidates=200, n_shortlist=4, train_steps=50, ensemble=2)
    study = optuna.create_study(sampler=sampler, directions=["maximize"] * n_objectives)
    study.optimize(_objective(space, n_objectives), n_trials=N_TRIALS)
    trials = study.get_trials()
    assert len(trials) == N_TRIALS and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        _valid(space, t.params)
        assert all(math.isfinite(v) for v in t.values)
