"""An LSTM controller over any space's decisions, trained by REINFORCE (Zoph & Le 2017; ENAS, Pham et al. 2018).

The controller writes an architecture one decision at a time. Each step feeds the embedding of the
previous decision's value into one LSTM cell; the decision's own softmax head over its values reads the
hidden state. The decisions are those of `space.distributions()`:

- categorical: one value per choice;
- integer: every value when there are at most `bins` of them (a depth 1..4, a step-2 range), else
  `bins` values spread evenly from low to high (on log scale for a log distribution), snapped to the step;
- float: `bins` values from low to high the same way (every grid point when a step gives at most `bins`).

Order and conditional decisions: the controller walks the space's own `suggest` with a stand-in trial,
so a decision is generated when `suggest` asks it, in the order it asks (the same order every time for a
fixed-structure space; in a variable-depth space the depth comes first and only the blocks it keeps are
asked). An architecture is therefore always exactly what the space's `suggest` would record, and
`log_prob(arch)` replays the same walk with the architecture's values: its log-probability is exact,
conditional decisions included. Given a plain mapping of distributions instead of a space, every decision
is asked in the mapping's order, and `log_prob` skips the decisions an architecture lacks.

Training is REINFORCE with a moving-average baseline and an entropy bonus:

    loss = -mean_i (R_i - b) log pi(a_i) - entropy_weight * mean_i H_i,    b <- decay b + (1 - decay) mean_i R_i

where H_i is the mean per-decision entropy along a_i's path and b starts at the first batch's mean reward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from torch import nn

from nasopt.errors import UserError
from nasopt.oneshot.mixed import param_key
from nasopt.samplers._standin import StandInTrial

__all__ = ["Controller", "value_grid"]


def value_grid(dist: BaseDistribution, bins: int) -> tuple[Any, ...]:
    """The values a controller head chooses among for `dist` (see the module docstring)."""
    if isinstance(dist, CategoricalDistribution):
        return tuple(dist.choices)
    if not isinstance(dist, (IntDistribution, FloatDistribution)):
        raise UserError(f"the controller cannot decide a {type(dist).__name__}; use Categorical, Int or Float")
    low, high, step = dist.low, dist.high, dist.step
    if low == high:
        return (low,)
    if step is not None:
        top = int(math.floor((high - low) / step + 1e-9))  # grid points low + k * step, k = 0..top
        if top + 1 <= bins:
            ks: Sequence[int] = range(top + 1)
        elif dist.log:  # a log int (step 1): spread on log scale
            ks = sorted({int(round(v)) - int(low) for v in np.geomspace(low, high, bins)})
        else:
            ks = sorted({int(round(k)) for k in np.linspace(0, top, bins)})
        values = [low + k * step for k in ks]
        if isinstance(dist, FloatDistribution):
            return tuple(float(min(round(v, 12), high)) for v in values)
        return tuple(int(v) for v in values)
    points = np.geomspace(low, high, bins) if dist.log else np.linspace(low, high, bins)
    return tuple(float(min(max(v, low), high)) for v in points)


class _Missing(Exception):
    """The architecture being scored lacks a decision (or has a value outside the decision's grid)."""


@dataclass
class Path:
    """One walk of the controller: the architecture and, along its decisions, the summed log-probability
    and entropy (tensors, differentiable when walked with grad) and each head's softmax."""

    arch: dict[str, Any]
    log_prob: torch.Tensor
    entropy: torch.Tensor
    steps: int
    probs: dict[str, torch.Tensor]


class Controller(nn.Module):
    """The policy over a space's architectures (or over a mapping of distributions).

    Args:
        space: a search space (`suggest` + `distributions`) or a mapping name -> distribution.
        hidden: LSTM cell and embedding size.
        bins: how many values an integer or float decision is discretised to (module docstring).
        tanh_constant, temperature: logits = tanh_constant * tanh(z / temperature) (ENAS), which bounds
            how certain a head can become; tanh_constant=None uses z / temperature as is.
        lr: Adam's learning rate; entropy_weight: the entropy bonus; baseline_decay: the moving average's
            decay; grad_clip: the gradient norm limit of one update.
        seed: seed of the initial weights and of the sampling generator.
    """

    def __init__(self, space: Any, *, hidden: int = 64, bins: int = 10, tanh_constant: float | None = 2.5,
                 temperature: float = 1.0, lr: float = 3.5e-3, entropy_weight: float = 1e-4,
                 baseline_decay: float = 0.95, grad_clip: float = 5.0, seed: int = 0) -> None:
        super().__init__()
        rules = [(hidden >= 1, f"`hidden >= 1` must hold, but got {hidden=}"),
                 (bins >= 2, f"`bins >= 2` must hold, but got {bins=}"),
                 (temperature > 0, f"`temperature > 0` must hold, but got {temperature=}"),
                 (lr > 0, f"`lr > 0` must hold, but got {lr=}"),
                 (0.0 <= baseline_decay < 1.0, f"`0 <= baseline_decay < 1` must hold, but got {baseline_decay=}")]
        for ok, message in rules:
            if not ok:
                raise UserError(message)
        if isinstance(space, Mapping):
            self.space, self.distributions = None, dict(space)
        else:
            self.space, self.distributions = space, dict(space.distributions())
        if not self.distributions:
            raise UserError("the controller needs at least one decision, but the space has none")
        self.values = {name: value_grid(dist, bins) for name, dist in self.distributions.items()}
        self.tanh_constant, self.temperature = tanh_constant, temperature
        self.entropy_weight, self.baseline_decay, self.grad_clip = entropy_weight, baseline_decay, grad_clip
        init = torch.Generator().manual_seed(seed)
        self.start = nn.Parameter(torch.empty(1, hidden))
        self.cell = nn.LSTMCell(hidden, hidden)
        self.embed = nn.ModuleDict({param_key(n): nn.Embedding(len(v), hidden) for n, v in self.values.items()})
        self.heads = nn.ModuleDict({param_key(n): nn.Linear(hidden, len(v)) for n, v in self.values.items()})
        with torch.no_grad():
            for p in self.parameters():  # ENAS' init: uniform in [-0.1, 0.1]
                p.copy_(torch.rand(p.shape, generator=init) * 0.2 - 0.1)
        self.baseline: torch.Tensor
        self.register_buffer("baseline", torch.tensor(float("nan")))  # nan until the first update
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed + 1)

    # -- walking the space ------------------------------------------------------------------------
    def _index(self, name: str, value: Any) -> int:
        """Index of `value` in the decision's grid: exact for categorical, nearest for numbers."""
        dist, values = self.distributions[name], self.values[name]
        if isinstance(dist, CategoricalDistribution):
            try:
                return int(dist.to_internal_repr(value))
            except (ValueError, TypeError):
                raise _Missing(name) from None
        try:
            x = float(value)
        except (ValueError, TypeError):
            raise _Missing(name) from None
        grid = np.asarray(values, dtype=float)
        if dist.log and x > 0:  # type: ignore[attr-defined]
            return int(np.argmin(np.abs(np.log(grid) - math.log(x))))
        return int(np.argmin(np.abs(grid - x)))

    def _logits(self, name: str, h: torch.Tensor) -> torch.Tensor:
        z = self.heads[param_key(name)](h) / self.temperature  # (1, n_values)
        return z if self.tanh_constant is None else self.tanh_constant * torch.tanh(z)

    def walk(self, arch: Mapping[str, Any] | None = None) -> Path:
        """Sample an architecture (`arch=None`) or score `arch`, through the space's `suggest`.

        Runs with grad when grad is enabled (for `update`); `sample` and `marginals` wrap it in no_grad.
        """
        device = self.start.device
        state: list[Any] = [self.start, None]  # LSTM input, (h, c)
        terms: list[torch.Tensor] = []
        entropies: list[torch.Tensor] = []
        probs: dict[str, torch.Tensor] = {}

        def answer(name: str, asked: BaseDistribution) -> Any:
            if name not in self.values:
                raise UserError(f"{type(self.space).__name__}.suggest asks {name!r}, which its distributions() "
                                "does not list; list every decision there")
            if arch is not None:
                if name not in arch:
                    raise _Missing(name)
                index = self._index(name, arch[name])
            h, c = self.cell(state[0], state[1])
            logp = F.log_softmax(self._logits(name, h), dim=-1)[0]  # (n_values,)
            p = logp.exp()
            if arch is None:
                index = int(torch.multinomial(p.detach().cpu(), 1, generator=self.generator))
            terms.append(logp[index])
            entropies.append(-(p * logp).sum())
            probs[name] = p.detach()
            state[0], state[1] = self.embed[param_key(name)](torch.tensor([index], device=device)), (h, c)
            if arch is not None:
                return arch[name]
            value = self.values[name][index]
            if not _contains(asked, value):
                raise UserError(f"{type(self.space).__name__}.suggest asks {name!r} as {asked}, but its "
                                f"distributions() gives {self.distributions[name]}; make the two agree")
            return value

        trial = StandInTrial(answer)
        if self.space is not None:
            try:
                self.space.suggest(trial)
            except _Missing as e:
                raise UserError(f"the architecture lacks decision {e.args[0]!r}, which the space asks") from None
        else:
            for name, dist in self.distributions.items():
                try:
                    trial.take(name, dist)
                except _Missing:  # scoring a partial architecture: the decision is skipped
                    continue
        zero = self.start.new_zeros(())
        return Path(dict(trial.params), torch.stack(terms).sum() if terms else zero,
                    torch.stack(entropies).sum() if entropies else zero, len(terms), probs)

    # -- the public policy ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int = 1) -> list[dict[str, Any]]:
        """`n` architectures drawn from the policy (the controller's own generator)."""
        return [self.walk().arch for _ in range(n)]

    def log_prob(self, arch: Mapping[str, Any]) -> torch.Tensor:
        """log pi(arch), differentiable: the sum over the decisions the space asks for `arch`."""
        return self.walk(arch).log_prob

    @torch.no_grad()
    def marginals(self, n: int = 64) -> dict[str, list[float]]:
        """Per decision, P(value) estimated over `n` sampled paths as the mean of the head's softmax
        (the marginal, with less noise than counting the sampled values); decisions no path asked are absent."""
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for _ in range(n):
            for name, p in self.walk().probs.items():
                sums[name] = sums.get(name, 0) + p  # type: ignore[assignment, operator]
                counts[name] = counts.get(name, 0) + 1
        return {name: [round(float(v), 6) for v in sums[name] / counts[name]]
                for name in self.values if name in sums}

    def update(self, archs: Sequence[Mapping[str, Any]], rewards: Sequence[float]) -> dict[str, float]:
        """One REINFORCE step on a batch; returns the loss, mean reward, baseline (before the step) and
        mean per-decision entropy of the batch's paths."""
        if len(archs) != len(rewards) or not archs:
            raise ValueError(f"`len(archs) == len(rewards) >= 1` must hold, but got {len(archs)} and {len(rewards)}")
        r = torch.tensor([float(v) for v in rewards], dtype=torch.float32, device=self.start.device)
        if not bool(torch.isfinite(r).all()):
            raise ValueError(f"rewards must be finite, but got {list(rewards)}")
        if bool(torch.isnan(self.baseline)):
            self.baseline.copy_(r.mean())
        baseline = float(self.baseline)
        paths = [self.walk(a) for a in archs]
        log_prob = torch.stack([p.log_prob for p in paths])
        entropy = torch.stack([p.entropy / max(p.steps, 1) for p in paths])
        loss = -((r - baseline) * log_prob).mean() - self.entropy_weight * entropy.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(self.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            self.baseline.mul_(self.baseline_decay).add_((1.0 - self.baseline_decay) * r.mean())
        return {"loss": float(loss.detach()), "reward": float(r.mean()), "baseline": baseline,
                "entropy": float(entropy.mean().detach())}


def _contains(dist: BaseDistribution, value: Any) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
