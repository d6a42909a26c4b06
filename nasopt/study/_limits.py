"""Can any architecture of the space meet the study's hard limits? Checked before the storage is touched.

A limit that no network of the space meets (`constraints={"params": 2000}` on a space whose smallest
network has 5,300 parameters) would spend the whole budget on rejected trials. Parameters, multiply-adds,
int8 flash and SRAM (`nasopt.measure._budgets`) are counted from a built network in milliseconds, so
`check_reachable` looks for one architecture within the limits: a few random ones first (a loose limit
ends here), then a coordinate descent that tries every choice of each decision in turn, keeping whatever
brings the counted metrics down, until an architecture fits or a full pass changes nothing. The
architectures are made through the space's own `suggest` (an `optuna.trial.FixedTrial`), so conditional
spaces work as they do in a trial.

For the bundled spaces each decision adds its own cost, so the descent ends at the smallest network; for
a space where decisions interact, and for `sram_kb` (a peak over the schedule, not a sum), it is a local
minimum, and the message says "smallest found" (the smallest of every architecture counted). Measured
limits (latency, memory, energy) are not checked here: they depend on the machine.

`limits_for` hands the same counted limits to the sampler (`nasopt.samplers.with_limits`), with the rule that
counts them: the network built on the study's task, or the nano-bench table's entry, as the trial will.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nasopt.errors import UserError
from nasopt.nanobench import NanoBench
from nasopt.samplers import Limits

__all__ = ["check_reachable", "limits_for", "COUNTED"]

COUNTED = ("params", "macs", "flash_kb", "sram_kb")  # limits computable from the architecture alone
_WHAT = {"params": "parameters", "macs": "multiply-adds"}
_RANDOM = 8  # random architectures tried before the descent
_PASSES = 4


def _choices(dist: Any) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        values = list(range(int(dist.low), int(dist.high) + 1, int(dist.step or 1)))
        return values if len(values) <= 16 else [values[0], values[len(values) // 2], values[-1]]
    if isinstance(dist, FloatDistribution):
        return [dist.low, dist.high]
    return []


def _counter(space: Any, task: Any, metrics: list[str]) -> tuple[Any, dict[str, dict[str, float] | None]]:
    from nasopt.measure._budgets import counted_metrics

    cache: dict[str, dict[str, float] | None] = {}

    def count(full: dict[str, Any]) -> dict[str, float] | None:
        try:
            arch = dict(space.suggest(optuna.trial.FixedTrial(full)))
        except Exception:
            return None
        key = repr(sorted(arch.items()))
        if key not in cache:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = space.build(arch, task)
                    cache[key] = counted_metrics(model, task.input_shape, {"params", *metrics})
            except Exception:  # a combination the space cannot build: not a candidate
                cache[key] = None
        return cache[key]

    return count, cache


def limits_for(space: Any, task: Any, constraints: dict[str, float]) -> Limits | None:
    """The study's counted limits for its sampler, or None when it has none (or the task has no input shape)."""
    bounds = {m: float(v) for m, v in constraints.items() if m in COUNTED}
    if not bounds:
        return None
    if isinstance(task, NanoBench):  # the table's counts, as the trial's look-up reports them
        return Limits(bounds, lambda arch: {m: float(task.entry(arch)[m]) for m in bounds}, space)
    if not hasattr(task, "input_shape"):
        return None

    def count(arch: Any) -> dict[str, float]:
        import torch

        from nasopt.measure._budgets import counted_metrics

        # the sampler's counts leave the trials' random numbers alone (a build initialises weights)
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return counted_metrics(space.build(dict(arch), task), task.input_shape, {"params", *bounds})

    return Limits(bounds, count, space)


def _score(values: dict[str, float], limits: dict[str, float]) -> float:
    """How far over the limits (0 = within all of them); below that, how close to them."""
    over = sum(max(0.0, values[m] / limits[m] - 1.0) for m in limits)
    return over if over > 0 else -1.0


def check_reachable(space: Any, task: Any, constraints: dict[str, float], *, seed: int = 0) -> None:
    """Raise UserError when no architecture of `space` found meets the counted `constraints`."""
    limits = {m: float(v) for m, v in constraints.items() if m in COUNTED}
    if not limits or not hasattr(task, "input_shape"):
        return
    count, cache = _counter(space, task, list(limits))
    distributions = space.distributions()
    rng = random.Random(seed)
    best: tuple[float, dict[str, Any], dict[str, float]] | None = None
    for _ in range(_RANDOM):
        full = {name: rng.choice(_choices(d) or [None]) for name, d in distributions.items()}
        values = count(full)
        if values is None:
            continue
        score = _score(values, limits)
        if score < 0:
            return
        if best is None or score < best[0]:
            best = (score, full, values)
    if best is None:
        return  # no architecture could be built here: the dry build reports why
    score, full, values = best
    choices = {name: _choices(d) for name, d in distributions.items()}
    # moves: one decision to one choice, and "every decision that offers value v takes v" (decisions that
    # interact, e.g. a cell input that costs a preprocessing layer only while any edge reads it)
    values_seen = list(dict.fromkeys(repr(c) for cs in choices.values() for c in cs))
    for _ in range(_PASSES):
        improved = False
        moves: list[dict[str, Any]] = [
            {name: c for name, cs in choices.items() for c in cs if repr(c) == v} for v in values_seen]
        moves += [{name: c} for name, cs in choices.items() for c in cs]
        for move in moves:
            if all(full[k] == c for k, c in move.items()):
                continue
            trial_values = count({**full, **move})
            if trial_values is None:
                continue
            trial_score = _score(trial_values, limits)
            if trial_score < 0:
                return
            if trial_score < score - 1e-12:
                score, full, values, improved = trial_score, {**full, **move}, trial_values, True
        if not improved:
            break
    counted = [v for v in cache.values() if v is not None]  # every architecture counted
    smallest = {m: min(v[m] for v in counted) for m in limits}  # each metric's own minimum over them all
    unmet = [m for m in limits if smallest[m] > limits[m]]
    if not unmet:  # each limit alone is met by some network, but none found meets them all
        closest = ", ".join(f"{m}={values[m]:,.6g}" for m in limits)
        raise UserError(f"no architecture of {type(space).__name__} found in {len(counted)} meets the hard limits "
                        f"{', '.join(f'{m} <= {v:,.6g}' for m, v in limits.items())} together (the closest: "
                        f"{closest}); raise one of them or make the space smaller")
    parts = [f"{m} <= {limits[m]:,.0f}, but the smallest network found has {smallest[m]:,.0f} {_WHAT[m]}"
             if m in _WHAT else f"{m} <= {limits[m]:g}, but the smallest {m} found in {len(counted)} "
             f"architectures is {smallest[m]:.3f}" for m in unmet]
    first = unmet[0]
    raise_to = math.ceil(smallest[first]) if first in _WHAT else math.ceil(smallest[first] * 1000) / 1000
    raise UserError(f"no architecture of {type(space).__name__} meets the hard limit "
                    f"{'; '.join(parts)}; raise the limit (constraints={{{first!r}: {raise_to:g}}} "
                    "or more) or make the space smaller")
