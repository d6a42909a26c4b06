"""A stand-in for `optuna.Trial` that runs a search space's `suggest` outside Optuna.

A space's `suggest(trial)` only calls `trial.suggest_categorical/int/float`, so samplers and controllers
walk it with this object to draw, mutate or score whole architectures thousands of times a second. Each
decision is answered once by `take(name, distribution)` (the caller's drawing rule) and recorded in
`params` in the order the space asked it; asked again, it keeps its first value, as in Optuna.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from nasopt.samplers._base import MISSING, fit_value
from nasopt.samplers._limits import draw_value

__all__ = ["StandInTrial", "chooser"]


class StandInTrial:
    """Answers every decision `space.suggest` asks with `take(name, distribution)`.

    Args:
        take: the value of a decision, given its name and the distribution the space asked it with.
        dists: a cache of built distributions to share across walks (building one costs more than
            drawing a value); a fresh one by default.
    """

    def __init__(self, take: Callable[[str, BaseDistribution], Any],
                 dists: dict[tuple[Any, ...], BaseDistribution] | None = None) -> None:
        self.answer = take
        self.dists = {} if dists is None else dists
        self.params: dict[str, Any] = {}

    def take(self, name: str, dist: BaseDistribution) -> Any:
        """The decision `name`: answered at its first ask, then the recorded value."""
        if name not in self.params:
            self.params[name] = self.answer(name, dist)
        return self.params[name]

    def _dist(self, kind: type[BaseDistribution], *args: Any, types: tuple[type, ...] = ()) -> BaseDistribution:
        key = (kind, *args, *types)
        dist = self.dists.get(key)
        if dist is None:
            dist = self.dists[key] = kind(*args)
        return dist

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        choices = tuple(choices)  # keyed with their types too: (0, 1) == (False, True), another decision
        return self.take(name, self._dist(CategoricalDistribution, choices, types=tuple(map(type, choices))))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(self.take(name, self._dist(IntDistribution, low, high, log, step)))

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return float(self.take(name, self._dist(FloatDistribution, low, high, log, step)))


def _draw(dist: BaseDistribution, rng: np.random.Generator, avoid: Any = MISSING) -> Any:
    """A random value of `dist` (`draw_value`: one uniform per draw), unequal to `avoid` if possible."""
    for _ in range(8):
        value = draw_value(dist, rng)
        if avoid is MISSING or value != avoid:
            break
    return value


def chooser(rng: np.random.Generator, pinned: Mapping[str, Any], base: Mapping[str, Any] | None = None,
             redraw: str | None = None) -> Callable[[str, BaseDistribution], Any]:
    """The drawing rule of a `StandInTrial`: a decision comes from `pinned`, else from `base` (except the one
    to `redraw`, drawn unequal to its base value if possible), else is drawn at random."""
    base = base or {}

    def choose(name: str, dist: BaseDistribution) -> Any:
        value = fit_value(dist, pinned[name]) if name in pinned else MISSING
        if value is MISSING and name != redraw and name in base:
            value = fit_value(dist, base[name])
        if value is MISSING:
            value = _draw(dist, rng, base.get(name, MISSING) if name == redraw else MISSING)
        return value

    return choose
