"""The parts of ProxylessNAS's supernet (`nasopt.oneshot.proxyless`): the binarised mixed op and the chooser
that puts it in every slot, the gates that sample its paths (one for the weight step, two with their
straight-through gate for the architecture step) and keep an updated pair's probability mass, and the
expected latency E[LAT] under softmax(alpha), differentiable in alpha, from a latency table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nasopt.measure._latency_table import LatencyTable
from nasopt.oneshot.mixed import MixedChooser, MixedOp, Supernet, param_key

__all__ = ["BinaryGateOp", "BinaryChooser", "BinaryGates", "LatencyModel"]


class BinaryGateOp(MixedOp):
    """A MixedOp that runs only its sampled paths.

    `sampled == (i,)`: exactly candidate i (the weight step, evaluation of the most probable path).
    `sampled == (i, j)` with `gate`: active path i and the other sampled path j, output
    `gate[0] * op_i(x) + gate[1] * op_j(x)` with gate values (1, 0); op_j runs without autograd, so only
    its output (for dL/dgate[1]) is kept. Nothing sampled: the weighted sum of every path (DARTS).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sampled: tuple[int, ...] = ()
        self.gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sampled:
            return super().forward(x)
        out = self.ops[self.sampled[0]](x)
        if self.gate is None:
            return out
        out = self.gate[0] * out
        for g, i in zip(self.gate[1:], self.sampled[1:], strict=True):
            with torch.no_grad():
                other = self.ops[i](x)
            out = out + g * other
        return out


class BinaryChooser(MixedChooser):
    """The MixedChooser whose ops are BinaryGateOps."""

    op_class = BinaryGateOp


class BinaryGates:
    """The binary-gated ops of a supernet by decision; samples, sets and clears their paths."""

    def __init__(self, supernet: Supernet, ops: list[BinaryGateOp]) -> None:
        self.supernet = supernet
        self.by_name: dict[str, list[BinaryGateOp]] = {}
        for op in ops:
            self.by_name.setdefault(op.name, []).append(op)

    def _probs(self, name: str) -> torch.Tensor:
        return F.softmax(self.supernet.alphas[param_key(name)].detach(), dim=-1).cpu()

    def one_path(self, generator: torch.Generator) -> dict[str, int]:
        """One path per decision, drawn from softmax(alpha): the weight step's single-path network."""
        chosen = {n: int(torch.multinomial(self._probs(n), 1, generator=generator)) for n in self.by_name}
        self.set({n: (i,) for n, i in chosen.items()})
        return chosen

    def most_probable(self) -> None:
        self.set({n: (int(self._probs(n).argmax()),) for n in self.by_name})

    def two_paths(self, generator: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Two paths per decision (the first one active) with their straight-through gates; returns
        decision -> (the pair's indices, their logits before the update) for `rescale`."""
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, ops in self.by_name.items():
            alpha = self.supernet.alphas[param_key(name)]
            if len(alpha) < 2:
                for op in ops:
                    op.sampled, op.gate = (0,), None
                continue
            pair = torch.multinomial(self._probs(name), 2, replacement=False, generator=generator)
            p = F.softmax(alpha[pair.to(alpha.device)], dim=0)  # the pair's renormalised probabilities
            first = int(torch.multinomial(p.detach().cpu(), 1, generator=generator))
            order = pair[[first, 1 - first]].to(alpha.device)
            p = p[[first, 1 - first]]
            gate = p - p.detach() + torch.tensor([1.0, 0.0], device=p.device)  # values (1, 0), gradient to p
            for op in ops:
                op.sampled, op.gate = tuple(int(i) for i in order), gate
            pairs[name] = (order, alpha.detach()[order].clone())
        return pairs

    def rescale(self, pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Shift each updated pair's logits so that its total probability mass is what it was."""
        with torch.no_grad():
            for name, (order, before) in pairs.items():
                alpha = self.supernet.alphas[param_key(name)]
                alpha[order] -= torch.logsumexp(alpha[order], 0) - torch.logsumexp(before, 0)

    def set(self, paths: Mapping[str, tuple[int, ...]]) -> None:
        for name, ops in self.by_name.items():
            for op in ops:
                op.sampled, op.gate = paths[name], None

    def clear(self) -> None:
        for ops in self.by_name.values():
            for op in ops:
                op.sampled, op.gate = (), None


@dataclass(frozen=True)
class LatencyModel:
    """Per decision the latency of every candidate (summed over the places it is used) and the fixed part."""

    table: LatencyTable
    fixed_ms: float
    costs: dict[str, list[float]]

    @property
    def minimum_ms(self) -> float:
        return self.fixed_ms + sum(min(c) for c in self.costs.values())

    def expected(self, supernet: Supernet) -> torch.Tensor:
        """E[LAT] under softmax(alpha), differentiable in alpha (ms)."""
        weights = supernet.op_weights()
        terms = [(weights[n] * torch.tensor(c, dtype=weights[n].dtype, device=weights[n].device)).sum()
                 for n, c in self.costs.items()]
        return self.fixed_ms + torch.stack(terms).sum()

    def of(self, supernet: Supernet) -> float:
        """The latency of the most probable candidate of every decision (the derived architecture)."""
        probs = supernet.probabilities()
        return self.fixed_ms + sum(c[int(np.argmax(probs[n]))] for n, c in self.costs.items())
