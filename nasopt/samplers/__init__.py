"""Discrete search strategies by name: Optuna's own samplers, and (in their own modules) the ones it lacks.

`make_sampler("nsga2", seed=0, n_objectives=3)` is what `--set sampler=NAME` and `StudySpec(sampler=...)`
resolve to; a study file may just as well construct any Optuna sampler itself.

A study's limits counted before training (params, MACs, flash, SRAM) reach its sampler through
`with_limits(sampler, Limits(...))`, which `nasopt.run` calls: a sampler with `use_limits` (REA, PNAS, BoTorch)
filters its own candidates, any other is wrapped in `WithinLimits`.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from nasopt._lazy import lazy_exports
from nasopt.errors import UserError
from nasopt.samplers._limits import Limits
from nasopt.samplers._rea import REASampler
from nasopt.samplers._rl import RLSampler
from nasopt.samplers._within import WithinLimits, with_limits

__all__ = ["SAMPLERS", "SAMPLER_CLASSES", "make_sampler", "sampler_class", "REASampler", "PNASSampler", "RLSampler",
           "BoTorchPoolSampler", "Limits", "WithinLimits", "with_limits"]


# imported on use: BoTorchPoolSampler needs the optional botorch package, PNASSampler's predictor trains with
# torch (the names alone need neither)
__getattr__, __dir__ = lazy_exports(__name__, globals(), {"BoTorchPoolSampler": "nasopt.samplers._botorch",
                                                         "PNASSampler": "nasopt.samplers._pnas"})


# Each factory takes keyword arguments: seed, n_objectives and space (the study's search space, for
# samplers that build or encode candidate architectures); it ignores what it does not need.
SamplerFactory = Callable[..., optuna.samplers.BaseSampler]


def _tpe(*, seed: int | None = None, **_: Any) -> optuna.samplers.BaseSampler:
    # constant_liar set explicitly: parallel workers must not all propose the same architecture;
    # group=True splits conditional (define-by-run) spaces into the groups that occur together
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True, group=True)


def _nsga2(*, seed: int | None = None, space: Any = None, **_: Any) -> optuna.samplers.BaseSampler:
    # Architecture decisions are categorical (op, kernel) or small integers (depth). Optuna crosses
    # categorical decisions uniformly whatever `crossover` is; an explicit UniformCrossover makes the
    # integer ones follow suit, so a child inherits one parent's depth instead of a blend of two.
    # A mutated decision is redrawn uniformly, which keeps a k-way choice unchanged 1/k of the time, so
    # mutation_prob = 1 / (n_decisions * P(change)) changes about one decision per child (Optuna's own
    # default, 1/n, changes fewer). Decisions outside the intersection of a conditional space (the layers
    # of a variable-depth net) are drawn at random by NSGA-II anyway; "rea" evolves those too.
    mutation_prob = None
    if space is not None and (dists := space.distributions()):
        change = sum(1.0 - 1.0 / _n_values(d) for d in dists.values()) / len(dists)
        mutation_prob = min(1.0, 1.0 / (len(dists) * max(change, 1e-3)))
    return optuna.samplers.NSGAIISampler(
        seed=seed, population_size=16, crossover=optuna.samplers.nsgaii.UniformCrossover(swapping_prob=0.5),
        crossover_prob=0.9, mutation_prob=mutation_prob)


def _n_values(dist: Any) -> float:
    """How many values a distribution has (inf for a continuous one)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return len(dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return (dist.high - dist.low) // dist.step + 1
    return float("inf") if dist.high > dist.low else 1.0


def _rea(*, seed: int | None = None, **_: Any) -> optuna.samplers.BaseSampler:
    return REASampler(seed=seed)


def _pnas(*, seed: int | None = None, space: Any = None, **_: Any) -> optuna.samplers.BaseSampler:
    from nasopt.samplers._pnas import PNASSampler

    return PNASSampler(space, seed=seed)


def _rl(*, seed: int | None = None, space: Any = None, **_: Any) -> optuna.samplers.BaseSampler:
    return RLSampler(space, seed=seed)


def _botorch(*, seed: int | None = None, space: Any = None, **_: Any) -> optuna.samplers.BaseSampler:
    try:
        from nasopt.samplers._botorch import BoTorchPoolSampler
    except ImportError as e:
        raise UserError("the botorch sampler needs the bayes extra: pip install 'nasopt[bayes]'") from e
    return BoTorchPoolSampler(space=space, seed=seed)


GP_MAX_DECISIONS = 32


def _gp(*, seed: int | None = None, space: Any = None, **_: Any) -> optuna.samplers.BaseSampler:
    n = len(space.distributions()) if space is not None else 0
    if n > GP_MAX_DECISIONS:
        # GPSampler optimises its acquisition over the relaxed product of all decisions; past a few
        # dozen categorical ones that takes longer per trial than many trainings
        raise UserError(f"the gp sampler cannot handle a space with {n} decisions (more than {GP_MAX_DECISIONS}): "
                        "use tpe, rea or botorch, which scale to large categorical spaces")
    return optuna.samplers.GPSampler(seed=seed)


SAMPLERS: dict[str, SamplerFactory] = {
    "random": lambda *, seed=None, **_: optuna.samplers.RandomSampler(seed=seed),
    "tpe": _tpe,
    "nsga2": _nsga2,
    "gp": _gp,
    "rea": _rea,
    "pnas": _pnas,
    "rl": _rl,
    "botorch": _botorch,
}


# name -> "module:Class", for a study file that names a sampler with its own arguments (`sampler: {name: tpe,
# n_startup_trials: 5}`): the class those arguments go to
SAMPLER_CLASSES = {
    "random": "optuna.samplers:RandomSampler",
    "tpe": "optuna.samplers:TPESampler",
    "nsga2": "optuna.samplers:NSGAIISampler",
    "gp": "optuna.samplers:GPSampler",
    "rea": "nasopt.samplers:REASampler",
    "pnas": "nasopt.samplers:PNASSampler",
    "rl": "nasopt.samplers:RLSampler",
    "botorch": "nasopt.samplers:BoTorchPoolSampler",
}


def sampler_class(name: str) -> type:
    """The class of the sampler called `name`; raises `UserError` listing the known names."""
    if name not in SAMPLER_CLASSES:
        raise UserError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLER_CLASSES)}")
    module, attr = SAMPLER_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def make_sampler(name: str, *, seed: int | None = None, n_objectives: int = 1,
                 space: Any = None) -> optuna.samplers.BaseSampler:
    """The sampler called `name`, seeded; raises `UserError` listing the known names."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed=seed, n_objectives=n_objectives, space=space)
