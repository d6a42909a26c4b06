"""Discrete search strategies by name: Optuna's own samplers, and (in their own modules) the ones it lacks.

`make_sampler("nsga2", seed=0, n_objectives=3)` is what `--set sampler=NAME` and `StudySpec(sampler=...)`
resolve to; a study file may just as well construct any Optuna sampler itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from nasopt.errors import UserError

__all__ = ["SAMPLERS", "make_sampler"]


# Each factory takes keyword arguments: seed, n_objectives and space (the study's search space, for
# samplers that build or encode candidate architectures); it ignores what it does not need.
SamplerFactory = Callable[..., optuna.samplers.BaseSampler]


def _tpe(*, seed: int | None = None, **_: Any) -> optuna.samplers.BaseSampler:
    # constant_liar set explicitly: parallel workers must not all propose the same architecture
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True, group=True)


def _nsga2(*, seed: int | None = None, **_: Any) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)


SAMPLERS: dict[str, SamplerFactory] = {
    "random": lambda *, seed=None, **_: optuna.samplers.RandomSampler(seed=seed),
    "tpe": _tpe,
    "nsga2": _nsga2,
    "gp": lambda *, seed=None, **_: optuna.samplers.GPSampler(seed=seed),
}


def make_sampler(name: str, *, seed: int | None = None, n_objectives: int = 1,
                 space: Any = None) -> optuna.samplers.BaseSampler:
    """The sampler called `name`, seeded; raises `UserError` listing the known names."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed=seed, n_objectives=n_objectives, space=space)
