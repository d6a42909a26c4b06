"""Regularized (ageing) evolution: REA of Real et al. 2019, "Regularized Evolution for Image Classifier
Architecture Search", with the optional crossover of the NAS-from-scratch loop.

One child per trial:

    population = the last `population_size` COMPLETE trials, in the order they finished (ageing:
                 the oldest die, however good they were)
    parent     = best of `sample_size` members drawn at random (tournament)
    child      = parent, or with probability `crossover_prob` a uniform crossover of two tournament
                 winners, then exactly one decision mutated

Until `population_size` trials are complete, trials are sampled at random.

Define-by-run: the child is a whole params dict, decided when the trial asks its first parameter and
stored in the trial's system attrs (key `rea:child`), so any process can answer the rest of the trial.
Each asked name is answered from the child when the child has it and the value lies in the asked
distribution, otherwise at random: a mutation that adds a layer or switches an op reveals new
conditional decisions, and those are drawn at random.

The mutated decision is one both parents made (after crossover; the parent itself without crossover),
so in a tree-structured define-by-run space (each name asked under conditions on earlier values) it is
active in the child and the mutation always changes the network. Mutation of a categorical picks
another choice uniformly; an integer moves to a neighbouring value (depth: add or remove one layer);
a float takes a Gaussian step of 10% of its (log) range.

Hard limits (`use_limits`, which the runner calls with the study's counted limits): a child over a
limit is made again, up to `limit_tries` times (the first that fits, else the one that breaks the limits
least); the random trials before the population is full are drawn among the architectures that fit.
The child is then stored whole, as the space's `suggest` walks it, conditional decisions included.

Multi-objective studies: the tournament winner has the lowest non-domination rank within the
population, ties broken by the larger crowding distance within its front (NSGA-II's order), then at
random.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nasopt.errors import UserError
from nasopt.samplers._base import MISSING, ArchSampler, fit_value
from nasopt.samplers._limits import Limits, draw_value
from nasopt.samplers._standin import StandInTrial

__all__ = ["REASampler"]

CHILD_KEY = "rea:child"  # system attr: {"params": {...}, "parents": [numbers], "mutated": name | None}


class REASampler(ArchSampler):
    """Regularized evolution over the params of define-by-run trials, single- or multi-objective.

    Args:
        population_size: how many of the most recently finished COMPLETE trials form the population.
        sample_size: tournament size (members drawn without replacement from the population).
        crossover_prob: probability that the child is a uniform crossover of two tournament winners
            before its mutation (0 gives the paper's pure mutation).
        seed: seed of the evolution and of the random fallback.
        limit_tries: children made per trial at most while they break the study's limits (`use_limits`).
    """

    attr_key = CHILD_KEY

    def __init__(self, *, population_size: int = 20, sample_size: int = 5, crossover_prob: float = 0.5,
                 seed: int | None = None, limit_tries: int = 50) -> None:
        if population_size < 1:
            raise UserError(f"`population_size >= 1` must hold, but got {population_size=}; "
                            "use a population of a few dozen trials")
        if not 1 <= sample_size <= population_size:
            raise UserError(f"`1 <= sample_size <= population_size` must hold, but got {sample_size=} and "
                            f"{population_size=}; a tournament of about a quarter of the population is usual")
        if not 0.0 <= crossover_prob <= 1.0:
            raise UserError(f"`0 <= crossover_prob <= 1` must hold, but got {crossover_prob=}")
        if not isinstance(limit_tries, int) or limit_tries < 1:
            raise UserError(f"`limit_tries >= 1` must hold, but got {limit_tries=}")
        self.population_size, self.sample_size, self.crossover_prob = population_size, sample_size, crossover_prob
        self.limit_tries = limit_tries
        super().__init__(fallback_seed=seed)
        self._rng = np.random.RandomState(seed)
        self._limits: Limits | None = None
        self._dists: dict[tuple[Any, ...], BaseDistribution] = {}

    def use_limits(self, limits: Limits | None) -> None:
        """Propose only children within `limits` where it can (module docstring); None: no limits."""
        self._limits = limits

    def reseed_rng(self) -> None:
        self._rng.seed()
        super().reseed_rng()

    def arch_of(self, decision: Any) -> Mapping[str, Any]:
        return decision["params"]  # type: ignore[no-any-return]

    def population(self, study: Study) -> list[FrozenTrial]:
        """The last `population_size` COMPLETE trials in the order they finished (oldest first)."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        complete.sort(key=lambda t: (t.datetime_complete.timestamp() if t.datetime_complete else -math.inf,
                                     t.number))
        return complete[-self.population_size:]

    # -- one child per trial ---------------------------------------------------------------------
    def decide(self, study: Study, trial: FrozenTrial) -> tuple[dict[str, Any], dict[str, Any]]:
        """The trial's child record (stored under `rea:child`); nothing else is stored."""
        limits = self._limits
        if limits is None or trial.system_attrs.get("fixed_params"):
            return self._make_child(study), {}
        best: tuple[float, dict[str, Any]] | None = None
        for _ in range(self.limit_tries):
            child = self._make_child(study)
            child["params"] = self._walk(limits, child["params"])  # the whole network the trial will build
            excess = limits.excess(child["params"])
            if best is None or excess < best[0]:
                best = (excess, child)
            if excess == 0.0:
                break
        assert best is not None
        return best[1], {}

    def _walk(self, limits: Limits, params: Mapping[str, Any]) -> dict[str, Any]:
        """The architecture the space's `suggest` makes of `params`; what they lack is drawn at random."""
        def take(name: str, dist: BaseDistribution) -> Any:
            value = fit_value(dist, params[name]) if name in params else MISSING
            return draw_value(dist, self._rng) if value is MISSING else value

        trial = StandInTrial(take, self._dists)
        limits.space.suggest(trial)
        return trial.params

    def _make_child(self, study: Study) -> dict[str, Any]:
        population = self.population(study)
        if len(population) < self.population_size:
            return {"params": {}, "parents": [], "mutated": None}
        keys = _fitness(population, study.directions)
        parent = self._tournament(population, keys)
        parents = [parent]
        if self._rng.rand() < self.crossover_prob:
            other = self._tournament(population, keys)
            parents.append(other)
            params, distributions, shared = self._crossover(parent, other)
        else:
            params, distributions, shared = dict(parent.params), dict(parent.distributions), list(parent.params)
        mutated = self._mutate(params, distributions, shared)
        return {"params": params, "parents": [p.number for p in parents], "mutated": mutated}

    def _tournament(self, population: list[FrozenTrial], keys: list[tuple[float, float]]) -> FrozenTrial:
        # drawn in random order, so `min` (which keeps the first of equal keys) breaks ties at random
        members = self._rng.choice(len(population), size=min(self.sample_size, len(population)), replace=False)
        return population[min(members, key=lambda i: keys[i])]

    def _crossover(self, a: FrozenTrial, b: FrozenTrial
                   ) -> tuple[dict[str, Any], dict[str, BaseDistribution], list[str]]:
        """Uniform crossover: each decision both parents made comes from either with probability 1/2;
        a decision only one parent made is kept (it matters only if the child's structure asks it)."""
        params, distributions, shared = {}, {}, []
        for name in list(a.params) + [n for n in b.params if n not in a.params]:
            if name in a.params and name in b.params and a.distributions[name] == b.distributions[name]:
                shared.append(name)
                source = a if self._rng.rand() < 0.5 else b
            else:
                source = a if name in a.params else b
            params[name], distributions[name] = source.params[name], source.distributions[name]
        return params, distributions, shared

    def _mutate(self, params: dict[str, Any], distributions: Mapping[str, BaseDistribution],
                candidates: Sequence[str]) -> str | None:
        """Change exactly one of `candidates` (decisions active in every parent) in place."""
        mutable = [n for n in candidates if not distributions[n].single()]
        if not mutable:
            return None
        name = mutable[self._rng.randint(len(mutable))]
        params[name] = _mutate_value(params[name], distributions[name], self._rng)
        return name


# ---------------------------------------------------------------------------------------------- helpers

def _fitness(population: Sequence[FrozenTrial], directions: Sequence[StudyDirection]
             ) -> list[tuple[float, float]]:
    """A sort key per member, smaller is better: (loss, 0) for one objective, else (rank, -crowding)."""
    sign = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    loss = np.array([t.values for t in population], dtype=float) * sign  # (n, n_objectives), minimised
    if loss.shape[1] == 1:
        return [(float(v), 0.0) for v in loss[:, 0]]
    ranks = _non_domination_rank(loss)
    crowding = np.zeros(len(population))
    for rank in np.unique(ranks):
        front = np.flatnonzero(ranks == rank)
        crowding[front] = _crowding_distance(loss[front])
    return [(float(r), -float(c)) for r, c in zip(ranks, crowding, strict=True)]


def _non_domination_rank(loss: np.ndarray) -> np.ndarray:
    """The front of each point, shape (n, m) -> (n,), every column minimised: 0 for the points no other
    point dominates, 1 for those only front 0 dominates, and so on (equal points share a front)."""
    dominates = np.asarray((loss[:, None, :] <= loss[None, :, :]).all(-1) & (loss[:, None, :] < loss[None, :, :]).any(-1))
    ranks = np.zeros(len(loss), dtype=int)
    rest, rank = np.arange(len(loss)), 0
    while rest.size:
        dominated = dominates[np.ix_(rest, rest)].any(0)
        ranks[rest[~dominated]] = rank
        rest, rank = rest[dominated], rank + 1
    return ranks


def _crowding_distance(loss: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of the points of one front, shape (n, m) -> (n,); boundary points inf."""
    n = len(loss)
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(loss.shape[1]):
        order = np.argsort(loss[:, j], kind="stable")
        v = loss[order, j]
        distance[order[0]] = distance[order[-1]] = math.inf
        span = v[-1] - v[0]
        if span > 0 and math.isfinite(span):
            distance[order[1:-1]] += (v[2:] - v[:-2]) / span
    return distance


def _mutate_value(value: Any, distribution: BaseDistribution, rng: np.random.RandomState) -> Any:
    """A value of `distribution` different from `value` (which must not be single-valued)."""
    if isinstance(distribution, CategoricalDistribution):
        index = int(distribution.to_internal_repr(value))
        other = rng.randint(len(distribution.choices) - 1)
        return distribution.choices[other + (other >= index)]
    if isinstance(distribution, IntDistribution):
        # a neighbour: for a depth this adds or removes exactly one layer/block
        step = distribution.step
        neighbours = [v for v in (value - step, value + step) if distribution.low <= v <= distribution.high]
        return int(neighbours[rng.randint(len(neighbours))])
    if isinstance(distribution, FloatDistribution):
        log, low, high = distribution.log, distribution.low, distribution.high
        lo, hi = (math.log(low), math.log(high)) if log else (low, high)
        x = math.log(value) if log else value
        for _ in range(20):
            y = float(np.clip(x + rng.normal(0.0, 0.1 * (hi - lo)), lo, hi))
            new = math.exp(y) if log else y
            if distribution.step is not None:
                new = low + round((new - low) / distribution.step) * distribution.step
            new = min(max(new, low), high)
            if new != value:
                return new
        return _random_other(value, distribution, rng)
    raise UserError(f"REASampler cannot mutate a {type(distribution).__name__}; use Categorical, Int or "
                    "Float distributions")


def _random_other(value: float, distribution: FloatDistribution, rng: np.random.RandomState) -> float:
    while True:  # a non-single float distribution has other values, so this ends quickly
        new = float(rng.uniform(distribution.low, distribution.high))
        if distribution.step is not None:
            new = distribution.low + round((new - distribution.low) / distribution.step) * distribution.step
        new = min(max(new, distribution.low), distribution.high)
        if new != value:
            return new
