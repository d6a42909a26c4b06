"""The zero-cost proxies of a sampled trial (`nasopt.measure._proxies`), computed right after the cheap metrics
when the study names one: as an objective, a limit, or the proxy of its `Screen` pruner.

They are scored on one training batch of the task (the same batch for a trial's seed) on a copy of the built
network, so training afterwards is what it would have been without them. A limit on a proxy is the least
score allowed (every proxy is higher-is-better): a trial under it is pruned before training, with the reason,
and the limit is an Optuna constraint for the samplers. Then `Screen` ranks the score against the study's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from nasopt._format import fmt
from nasopt.errors import UserError
from nasopt.measure._proxies import PROXIES, proxy_batch, zero_cost
from nasopt.nanobench import NanoBench
from nasopt.pruners import Screen

if TYPE_CHECKING:
    from torch import nn

    from nasopt.study._spec import StudySpec

__all__ = ["PROXIES", "wanted", "check", "measure", "screen", "proxy_scorer", "give_proxies"]

BATCH = 64  # samples of the scoring batch (the zero-cost paper's batch for CIFAR-10)


def wanted(spec: StudySpec) -> list[str]:
    """The proxies the study's trials compute, in a fixed order."""
    named = {*spec.objectives, *spec.constraints}
    if isinstance(spec.pruner, Screen):
        named.add(spec.pruner.proxy)
    return [p for p in PROXIES if p in named]


def check(spec: StudySpec) -> None:
    """Raised when the spec is made, before anything is written: proxies need a network to score."""
    names = wanted(spec)
    if names and spec.dataset == "nanobench":
        raise UserError(f"nanobench answers from its table and builds no network, so it has no zero-cost proxy "
                        f"({names[0]!r}); search the nano space on real data (dataset='digits')")


def measure(spec: StudySpec, model: nn.Module, task: Any, seed: int) -> dict[str, float]:
    """The proxies the study names, of the untouched `model` (empty when it names none)."""
    names = wanted(spec)
    if not names:
        return {}
    x, y = proxy_batch(task, batch_size=BATCH, seed=seed)
    return zero_cost(model, names, x, y, task)


def screen(trial: optuna.Trial, spec: StudySpec, scores: dict[str, float]) -> None:
    """Limits on proxies (the least allowed), then the Screen pruner: TrialPruned with the reason."""
    low = []
    for metric, limit in spec.constraints.items():
        if metric in scores:
            trial.set_constraint(metric, limit - scores[metric])  # > 0 is infeasible (Optuna's rule)
            if scores[metric] < limit:
                low.append(f"{metric}={fmt(scores[metric], metric)} < {fmt(limit, metric)}")
    if low:
        raise optuna.TrialPruned("constraint violated before training: " + ", ".join(low))
    if isinstance(spec.pruner, Screen):
        reason = spec.pruner.screen(trial.study, trial.number, scores[spec.pruner.proxy])
        if reason:
            raise optuna.TrialPruned(reason)


def proxy_scorer(space: Any, task: Any, names: list[str], seed: int = 0) -> Callable[[Any], dict[str, float] | None]:
    """The rule a sampler scores an architecture's proxies by (`PNASSampler(proxy_inputs=...)`): the network
    built on `task` from a fixed seed, scored on one fixed training batch; None when it cannot be built. The
    caller's random numbers are left alone. A nano-bench study scores on the data the table was trained on."""
    import torch

    if isinstance(task, NanoBench):
        from nasopt.data import load_task

        task = load_task(task.meta["dataset"], seed=0)
    x, y = proxy_batch(task, batch_size=BATCH, seed=seed)

    def score(arch: Any) -> dict[str, float] | None:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            try:
                model = space.build(dict(arch), task)
            except Exception:  # a combination the space cannot build: no scores
                return None
            try:
                return zero_cost(model, names, x, y, task)
            except UserError:
                raise
            except Exception:  # this network cannot be scored: the sampler goes on without proxies
                return None

    return score


def give_proxies(sampler: Any, space: Any, task: Any, seed: int) -> None:
    """Hand a sampler that reads zero-cost proxies (`proxy_inputs`) the rule to score them on the study's task,
    after scoring one architecture with it: a proxy the space or task cannot have (no gradient, no weights) is
    a UserError before anything is written."""
    names = list(getattr(sampler, "proxy_inputs", None) or [])
    if names and callable(getattr(sampler, "use_proxies", None)):
        from nasopt.space import random_arch

        rule = proxy_scorer(space, task, names, seed)
        rule(random_arch(space, seed))
        sampler.use_proxies(rule)
