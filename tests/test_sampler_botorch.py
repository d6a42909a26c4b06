"""BoTorchPoolSampler: Optuna's sampler contract, plus BO-specific behaviour on cheap synthetic objectives.

Pools and fit budgets are kept small (`_fast`) so that the GP path runs in nearly every test while the
file needs about 10 s of CPU (the sampler computes on one thread).
"""

from __future__ import annotations

import itertools
import sys
import warnings

import numpy as np
import optuna
import pytest
import torch

pytest.importorskip("botorch")

from optuna.testing.pytest_samplers import (  # noqa: E402
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
)
from optuna.trial import TrialState  # noqa: E402

from nasopt.errors import UserError  # noqa: E402
from nasopt.samplers import make_sampler  # noqa: E402
from nasopt.samplers._botorch import BoTorchPoolSampler  # noqa: E402
from nasopt.search_spaces.mobile import MobileSpace  # noqa: E402
from nasopt.search_spaces.nano import NANO_OPS, NanoSpace  # noqa: E402
from nasopt.space import arch_key  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _fast(**kwargs) -> BoTorchPoolSampler:
    kwargs = {"n_startup_trials": 1, "n_candidates": 64, "n_mutations": 32, "max_fit_iter": 10, **kwargs}
    return BoTorchPoolSampler(**kwargs)


# -- Optuna's contract (SingleOnlySamplerTestCase does not apply: the sampler is multi-objective) -----------
class TestBasic(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: _fast(seed=0, n_startup_trials=5)


class TestRelative(RelativeSamplerTestCase):
    @pytest.fixture
    def sampler(self):  # n_startup_trials=1: these tests sample relative params after one trial
        return lambda: _fast(seed=0, n_candidates=16, n_mutations=8)


class TestMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: _fast(seed=0)


# -- a nano-like 2-objective problem with a known Pareto front ---------------------------------------------
COST = {"conv3x3": 3.0, "conv5x5": 5.0, "maxpool3x3": 1.0, "skip": 0.5, "zero": 0.0}
GAIN = {"conv3x3": 1.0, "conv5x5": 1.3, "maxpool3x3": 0.5, "skip": 0.3, "zero": 0.0}
WEIGHT = (0.6, 1.0, 0.8, 0.4)  # the positions matter unequally; a `zero` damps everything after it
REF = np.array([21.0, 4.5])


def cost_error(arch) -> tuple[float, float]:
    cost, gain, alive = 0.0, 0.0, 1.0
    for i, w in enumerate(WEIGHT):
        op = arch[f"pos{i}.op"]
        cost += COST[op]
        gain += alive * w * GAIN[op]
        alive *= 0.3 if op == "zero" else 1.0
    return cost, 4.0 - gain


def hypervolume(values) -> float:
    Y = np.asarray(values, dtype=float)
    Y = Y[(Y <= REF).all(axis=1)]
    # 2-D hypervolume (both minimised): sweep the points by the first objective
    hv, best = 0.0, REF[1]
    for c, e in sorted(map(tuple, Y)):
        if e < best:
            hv += (REF[0] - c) * (best - e)
            best = e
    return hv


def run(sampler, n_trials: int) -> optuna.Study:
    """`n_trials` of (cost, error), both minimised, over the nano space."""
    space = NanoSpace()
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(lambda t: cost_error(space.suggest(t)), n_trials=n_trials)
    return study


def test_known_front_is_what_hypervolume_measures():
    names = [f"pos{i}.op" for i in range(4)]
    every = [cost_error(dict(zip(names, ops, strict=True))) for ops in itertools.product(NANO_OPS, repeat=4)]
    assert hypervolume(every) == pytest.approx(60.52)


def test_beats_random_search_on_the_nano_problem():
    """Mean hypervolume over 3 seeds after 30 trials: random reaches about 53, BO about 56, the front 60.5."""
    bo, rnd = [], []
    for seed in range(3):
        sampler = _fast(seed=seed, space=NanoSpace(), n_startup_trials=8, n_candidates=128, n_mutations=64)
        bo.append(hypervolume([t.values for t in run(sampler, 30).trials]))
        rnd.append(hypervolume([t.values for t in run(optuna.samplers.RandomSampler(seed=seed), 30).trials]))
    assert np.mean(bo) > np.mean(rnd) + 1.5, (bo, rnd)


def test_seeded_and_never_repeats_an_architecture():
    a = run(_fast(seed=3, space=NanoSpace(), n_startup_trials=3), 12)
    b = run(_fast(seed=3, space=NanoSpace(), n_startup_trials=3), 12)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert len({arch_key(t.params) for t in a.trials}) == 12


def test_single_objective_beats_random_search():
    """LogEI on the error alone (unique optimum 0.36, all conv5x5): mean best of 3 seeds after 16 trials."""
    space = NanoSpace()

    def best(sampler) -> float:
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: cost_error(space.suggest(t))[1], n_trials=16)
        return study.best_value

    bo = [best(_fast(seed=seed, space=space, n_startup_trials=5)) for seed in range(3)]
    rnd = [best(optuna.samplers.RandomSampler(seed=seed)) for seed in range(3)]
    assert np.mean(bo) < np.mean(rnd) - 0.2, (bo, rnd)


def test_constraints_pruned_and_failed_trials():
    """Constraints as nasopt reports them: set, then PRUNED before training when broken (> 0). Those
    trials teach the constraint model; FAIL and other PRUNED trials are ignored."""
    space = NanoSpace()

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        cost, error = cost_error(space.suggest(trial))
        trial.set_constraint("cost", cost - 5.0)  # 28% of the 625 architectures are feasible
        if cost > 5.0:
            raise optuna.TrialPruned("constraint violated before training")
        if trial.number % 5 == 4:
            raise RuntimeError("boom")
        return cost, error

    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=_fast(seed=0, space=space, n_startup_trials=6))
    study.optimize(objective, n_trials=20, catch=(RuntimeError,))
    assert TrialState.FAIL in [t.state for t in study.trials]
    guided = study.trials[8:]
    feasible = [t for t in guided if t.constraints["cost"] <= 0]
    assert len(feasible) >= 0.6 * len(guided), [t.constraints["cost"] for t in guided]
    # once guided, no architecture twice (a FAILed one may come back: Optuna treats it as deleted)
    keys = [arch_key(t.params) for t in study.trials if t.state != TrialState.FAIL]
    assert not any(key in keys[:i] for i, key in enumerate(keys) if i >= 6)


def test_conditional_mobile_space():
    """Variable depth: candidates come from the space's own suggest, so every proposal is consistent."""
    space = MobileSpace(stages=3, max_depth=3)

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        arch = space.suggest(trial)
        blocks = [(arch[f"stage{s}.block{b}.kernel"], arch[f"stage{s}.block{b}.expand"])
                  for s in (1, 2, 3) for b in range(arch[f"stage{s}.depth"])]
        macs = arch["width"] * sum(k * k * e for k, e in blocks)
        error = 1.0 / (1.0 + 0.02 * macs) + 0.05 * abs(len(blocks) - 5)
        return error, macs, float(len(blocks))

    sampler = _fast(seed=0, space=space, n_startup_trials=4)
    study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no independent-sampling fallback warnings, no botorch warnings
        study.optimize(objective, n_trials=10)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    for t in study.trials[4:]:
        assert t.params.keys() <= space.distributions().keys()
        for s in (1, 2, 3):
            depth = t.params[f"stage{s}.depth"]
            present = {b for b in range(3) if f"stage{s}.block{b}.kernel" in t.params}
            assert present == set(range(depth))
    assert len({arch_key(t.params) for t in study.trials}) == 10


def test_make_sampler_passes_the_space():
    sampler = make_sampler("botorch", seed=0, n_objectives=3, space=NanoSpace())
    assert isinstance(sampler, BoTorchPoolSampler)
    assert sampler.infer_relative_search_space(None, None) == NanoSpace().distributions()


def test_missing_extra_is_a_user_error(monkeypatch):
    for name in [m for m in sys.modules if m == "botorch" or m.startswith("botorch.")]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import botorch...` raise ImportError
    monkeypatch.delitem(sys.modules, "nasopt.samplers._botorch")
    with pytest.raises(UserError, match=r"pip install 'nasopt\[bayes\]'"):
        make_sampler("botorch", seed=0)


def test_arch_gp_matches_a_direct_computation():
    """`decision_groups` turns one-hot features into per-decision distances (Hamming for categorical decisions,
    1/2 for one present on one side only, squared differences of [0, 1]-scaled numbers), and ArchGP's batched
    posterior equals the textbook formulas evaluated pair by pair with numpy for its fitted hyperparameters."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from nasopt.samplers._arch_gp import ArchGP, decision_groups
    from nasopt.samplers._botorch import _encode

    space = {"depth": IntDistribution(1, 5), "k": CategoricalDistribution([3, 5]),
             "op": CategoricalDistribution(["conv", "pool", "skip"])}
    rng = np.random.default_rng(0)
    archs = [{"depth": int(rng.integers(1, 6)), "k": [3, 5][rng.integers(2)], "op": ["conv", "pool", "skip"][rng.integers(3)]}
             for _ in range(14)]
    for arch in archs[::4]:
        del arch["k"]  # a conditional decision, absent from some architectures
    X, G = _encode(archs, space), decision_groups(space)
    D = (((X[:, None] - X[None]) ** 2) @ G).numpy()

    def hamming(u, v, name):
        return 0.0 if u.get(name) == v.get(name) else 0.5 if (name in u) != (name in v) else 1.0

    for i, u in enumerate(archs):
        for j, v in enumerate(archs):
            expected = [((u["depth"] - v["depth"]) / 4) ** 2, hamming(u, v, "k"), hamming(u, v, "op")]
            assert D[i, j] == pytest.approx(expected)

    train, test = slice(0, 10), slice(10, 14)
    Y = torch.from_numpy(np.stack([X[:, 0].numpy() * 3 + rng.normal(size=14), rng.normal(size=14)], axis=1))
    gp = ArchGP(X[train], Y[train], G, None, max_iter=30)
    default = ArchGP(X[train], Y[train], G, None, max_iter=0)
    assert gp._loss(gp.raw) < default._loss(default.raw)  # the MAP fit improved on the starting point
    lam, mu, s_d, s_f, noise = (t.numpy() for t in gp._split(gp.raw))
    Xn = X.numpy()

    def matern(r2):
        r = np.sqrt(5 * r2)
        return (1 + r + r * r / 3) * np.exp(-r)

    def k(a, b, out):
        return s_d[out] * matern(D[a, b] @ lam[out]) + s_f[out] * matern(((Xn[a] - Xn[b]) ** 2) @ mu[out])

    mean, std = gp.posterior(X[test])
    for out in range(2):
        y = Y[train, out].numpy()
        loc, scale = y.mean(), y.std(ddof=1)
        K = np.array([[k(a, b, out) for b in range(10)] for a in range(10)]) + noise[out] * np.eye(10)
        for row, a in enumerate(range(10, 14)):
            ks = np.array([k(a, b, out) for b in range(10)])
            assert mean[row, out].item() == pytest.approx(ks @ np.linalg.solve(K, (y - loc) / scale) * scale + loc,
                                                          rel=1e-6)
            var = k(a, a, out) - ks @ np.linalg.solve(K, ks)
            assert std[row, out].item() == pytest.approx(np.sqrt(var) * scale, rel=1e-5)


def test_no_third_party_deprecation_noise_reaches_the_user():
    """botorch/gpytorch call torch.jit.script at import, which torch 2.14 deprecates with a FutureWarning the
    user cannot act on: importing and running the sampler with FutureWarnings as errors works."""
    import subprocess
    import sys

    code = ("import optuna, nasopt\n"
            "from nasopt.search_spaces.nano import NanoSpace\n"
            "from nasopt.samplers import make_sampler\n"
            "sp = NanoSpace()\n"
            "spec = nasopt.StudySpec(name='b', space=sp, dataset='nanobench', n_trials=12,\n"
            "                        sampler=make_sampler('botorch', seed=0, n_objectives=1, space=sp))\n"
            "study = nasopt.run(spec, storage=optuna.storages.InMemoryStorage(), progress=False)\n"
            "print(len(study.trials))\n")
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "12", done.stderr[-2000:]
