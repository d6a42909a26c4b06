"""A study's hard limits as a sampler sees them: metrics counted from an architecture alone, before training.

A study with `constraints={"params": 2000}` prunes every architecture over the limit before training, but
a sampler that is not told of the limit keeps proposing such architectures and the study spends its budget
on them. `Limits` holds the limits on the counted metrics (params, MACs, int8 flash and SRAM) and the rule
that counts them for an architecture (the runner builds the network on the study's task, or reads the
nano-bench table), so a sampler can judge a candidate before proposing it:

- the pool-based samplers (`BoTorchPoolSampler`, `PNASSampler`) drop the candidates over a limit from
  their pool, and `REASampler` draws its child again; each takes them through `use_limits(limits)`;
- any other sampler (Optuna's TPE, NSGA-II, random, GP, a user's own) is wrapped in `WithinLimits`, which
  asks it again for a trial whose proposal breaks a limit.

Where nothing fits, each keeps the candidate that breaks the limits least (`excess`), so a study still
runs and its trials still say why they were pruned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from nasopt.errors import UserError
from nasopt.space import arch_key

__all__ = ["Limits", "COUNTED", "draw_value"]

COUNTED = ("params", "macs", "flash_kb", "sram_kb")  # metrics computable from the architecture alone
_MAX_CACHED = 100_000


class Limits:
    """Upper bounds on counted metrics, and the rule that counts them for an architecture.

    Args:
        bounds: metric -> the most allowed (`params`, `macs`, `flash_kb`, `sram_kb`).
        count: architecture (decision name -> value) -> the counted metrics, or None when the
            architecture cannot be built; called once per architecture (cached).
        space: the search space, whose `suggest` the samplers walk to draw whole architectures.
    """

    def __init__(self, bounds: Mapping[str, float], count: Callable[[Mapping[str, Any]], Mapping[str, float] | None],
                 space: Any) -> None:
        unknown = [m for m in bounds if m not in COUNTED]
        if unknown:
            raise UserError(f"Limits cannot count {unknown[0]!r} before training; the counted metrics are "
                            f"{', '.join(COUNTED)}")
        bad = {m: v for m, v in bounds.items() if not (isinstance(v, (int, float)) and v > 0)}
        if bad:
            raise UserError(f"a limit must be a positive number, but got {bad}")
        self.bounds = {m: float(v) for m, v in bounds.items()}
        self.space = space
        self._count = count
        self._cache: dict[str, float] = {}  # arch key -> excess

    def __repr__(self) -> str:
        return f"Limits({', '.join(f'{m} <= {v:g}' for m, v in self.bounds.items())})"

    def excess(self, arch: Mapping[str, Any]) -> float:
        """How far `arch` is over the limits: the sum of (value / limit - 1) over the limits it breaks; 0 when
        it meets them all, inf when it cannot be built."""
        key = arch_key(arch)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            values = self._count(arch)
        except Exception:  # a combination the space cannot build is no candidate
            values = None
        if values is None:
            out = math.inf
        else:
            out = sum(max(0.0, float(values[m]) / v - 1.0) for m, v in self.bounds.items())
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[key] = out
        return out

    def fits(self, arch: Mapping[str, Any]) -> bool:
        return self.excess(arch) == 0.0

    def first(self, archs: Sequence[Mapping[str, Any]], order: Iterable[int], n: int, *,
              at_most: int = 256) -> list[int]:
        """The first `n` indices of `order` (into `archs`, best first) whose architectures meet the limits,
        each counted as it comes up and at most `at_most` of them; where none of those fits, the `n` that
        break the limits least (so a sampler always has a proposal, and it moves towards the limits)."""
        fit: list[int] = []
        over: list[tuple[float, int]] = []
        for k, i in enumerate(order):
            if k >= at_most:
                break
            excess = self.excess(archs[i])
            if excess == 0.0:
                fit.append(int(i))
                if len(fit) == n:
                    break
            else:
                over.append((excess, int(i)))
        return fit or [i for _, i in sorted(over)[:n]]


def draw_value(dist: BaseDistribution, rng: Any) -> Any:
    """A value of `dist` drawn uniformly (log-uniformly for a log scale), as Optuna's RandomSampler draws;
    `rng` is anything with `random()` (`random.Random`, `numpy.random.RandomState`)."""
    u = float(rng.random())
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    low, high, step, log = dist.low, dist.high, dist.step, dist.log  # type: ignore[attr-defined]
    integer = isinstance(dist, IntDistribution)
    if log:  # an int covers [low - 0.5, high + 0.5] before rounding, as in Optuna
        pad = 0.5 if integer else 0.0
        x = math.exp(math.log(low - pad) + u * (math.log(high + pad) - math.log(low - pad)))
    elif step is not None:
        n = int((high - low) / step + 1e-8) + 1
        x = low + step * min(int(u * n), n - 1)
    else:
        x = low + u * (high - low)
    return int(min(max(round(x), low), high)) if integer else float(min(max(x, low), high))
