"""The expected int8 flash and SRAM of a supernet under its architecture weights: the budget penalties of DARTS
and PC-DARTS (`DARTS(penalty="flash_kb")` / `"sram_kb"`), counted as `nasopt.measure` counts a network.

A *place* is one use of a decision in the network (an edge shared by every normal cell has one place per cell;
all its places take the decision's one choice). Its candidates are built at full width from the op table with
the place's channels, stride and options, as the derived network builds them (PC-DARTS' partial channels are a
device of the search, not of the network). The *reference network* is the space's network with one op per
place, the candidate with the largest SRAM working set (below), built through the space's `supernet` (every
edge of a DARTS cell) or its `build` (a space whose decisions are all op choices on fixed edges).

flash_kb, linear: E[flash] = F + sum over places p of sum_i softmax(alpha_d(p))_i * flash(p, i), with flash(p, i)
= `flash_bytes` of candidate i alone at p, and F the flash outside the decisions (stem, cell preprocessing, head):
flash(reference) - sum over places of flash(its op).

sram_kb: the peak of a layer-by-layer schedule is the largest sum of live buffers over its steps, a max:
- W[p, i]: `sram_bytes` of candidate i alone at p's input shape, batch 1: its int8 input + output + the most
  internal buffers alive at once, under `_budgets`' schedule (with p's input held to the end of the op where a
  later op of the network reads it, so the op cannot start in place: chosen by which of the two schedules of the
  reference's op matches the network's step by step);
- H[p]: what the reference network holds besides the op while p runs: per step of p's op (`activation_steps`
  with the op marked), the network's live bytes minus the op's own at the same step, the largest: skip tensors,
  a cell's states until its concatenation, the outputs of a node's other edges;
- F: the largest live bytes of a step outside every place (stem, node sums, concatenations, head);
- the peak of an architecture is then max(F, max over decisions d of X[d, i_d]), X[d, i] = max over d's places
  p of H[p] + W[p, i]; E[sram] is its expectation with the decisions drawn independently from softmax(alpha):
  E = F + sum_k (v_k+1 - v_k) (1 - prod_d P(X[d, i_d] <= v_k)) over the sorted values v_k >= F of X. Every
  decision that can set the peak gets a gradient (not only today's bottleneck, as a max of expectations would).

How it relates to `sram_kb`/`flash_kb` of the derived network (one-hot alpha; checked in
tests/test_oneshot_budgets.py): where the derived network has every place of the supernet (nano, mobile,
nb201, layers-style op choices) flash is exact, and so is SRAM on nano and mobile; on nb201 SRAM is an upper
bound (a skip or zero op there frees a buffer that the reference holds: at most +25 %, 79 % exact). For a cell
space whose derivation keeps two edges per node (darts_cell, conv1d) both count every edge of the supernet:
exact for the network with all edges, an upper bound for the derived one (the dropped edges' ops).

`__call__` is the DARTS loss term, the expectation divided by its value at the heaviest choice of every decision
(in [0, 1]); `kb` the expectation in KB (1024 bytes) that the search history records as `expected_sram_kb`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasopt.errors import UserError
from nasopt.measure import activation_steps, flash_bytes, sram_bytes
from nasopt.oneshot.mixed import param_key
from nasopt.ops import build_op
from nasopt.space import random_arch

__all__ = ["BudgetPenalty", "RESOURCES"]

RESOURCES = ("flash_kb", "sram_kb")
KB = 1024


class _OnePerPlace:
    """A chooser that builds, at every place, the candidate `pick[name][place]` (default: the first), and
    records each place's decision, candidates, channels, stride, options and module in build order."""

    def __init__(self, pick: Mapping[str, Sequence[str]] | None = None) -> None:
        self.pick = pick or {}
        self.places: list[tuple[str, tuple[str, ...], int, int, int, dict[str, Any], nn.Module]] = []

    def __call__(self, name: str, candidates: Sequence[str], chosen: Any, C_in: int, C_out: int, stride: int,
                 **options: Any) -> nn.Module:
        place = sum(1 for p in self.places if p[0] == name)
        picks = self.pick.get(name)
        op = build_op(picks[place] if picks else candidates[0], C_in, C_out, stride, **options)
        self.places.append((name, tuple(candidates), C_in, C_out, stride, options, op))
        return op


def _network(space: Any, task: Any, chooser: _OnePerPlace) -> nn.Module:
    """The space's network through `chooser`: its supernet layout where it has one, else `build`."""
    if hasattr(space, "supernet"):
        return space.supernet(task, chooser)
    return space.build(random_arch(space, seed=0), task, chooser)


def _input_shapes(net: nn.Module, modules: Sequence[nn.Module], input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The input shape (without the batch) of each module, from one no-grad eval forward pass at batch 1."""
    shapes: dict[int, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        shapes.setdefault(id(module), tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(record) for m in modules]
    was = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        net.train(was)
        for h in hooks:
            h.remove()
    missing = [i for i, m in enumerate(modules) if id(m) not in shapes]
    if missing:
        raise UserError(f"{len(missing)} decision op(s) of the network never run in a forward pass; a budget "
                        "penalty needs every op of the supernet on the path from input to output")
    return [shapes[id(m)] for m in modules]


class _Holding(nn.Module):
    """`op` whose input stays alive to the end (returned beside the output): the op inside a network where a
    later op reads its input, which it then cannot overwrite in place."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.op(x), x


def _held(live: list[int], op: nn.Module, at: tuple[int, ...]) -> tuple[float, int]:
    """H[p] (the network's live bytes minus the op's own at the same step, the largest over the op's steps) and
    which schedule of the op alone explains the network's (0: input freed, 1: held): the one whose differences
    are the same at every step (the tensors held around the op), else the smaller spread; held where both do."""
    if not live:  # an op that runs no step (an identity): what is alive around it is counted outside it
        return 0.0, 0
    best: tuple[float, float, int] | None = None
    for holding, module in enumerate((op, _Holding(op))):
        alone = [s.live for s in activation_steps(module, at)]
        diff = [a - b for a, b in zip(live, alone, strict=True)] if len(alone) == len(live) else \
            [max(live) - max(alone)]
        if best is None or max(diff) - min(diff) <= best[0]:
            best = (float(max(diff) - min(diff)), float(max(diff)), holding)
    assert best is not None
    return best[1], best[2]


def _heaviest(work: list[list[float]]) -> int:
    """The candidate whose working set with the input held (then freed) is the largest; ties: the first."""
    return max(range(len(work)), key=lambda i: (work[i][1], work[i][0]))


class BudgetPenalty:
    """`resource` ("flash_kb" or "sram_kb") of the supernet's expected architecture (see the module's docstring).

    `penalty(supernet)` is the normalised expectation in [0, 1] under softmax(alpha) (the DARTS loss term);
    `expected_kb(probs)` the expectation in KB for `probs` = {decision: weights over its candidates}.
    """

    def __init__(self, resource: str, space: Any, task: Any) -> None:
        if resource not in RESOURCES:
            raise UserError(f"unknown budget {resource!r}; use one of {', '.join(RESOURCES)}")
        self.resource = resource
        shape = tuple(int(v) for v in task.input_shape)
        first = _OnePerPlace()  # every place's first candidate
        net = _network(space, task, first)
        self.names = [p[0] for p in first.places]
        self.decisions = list(dict.fromkeys(self.names))
        rows = {d: [k for k, n in enumerate(self.names) if n == d] for d in self.decisions}
        # per place: each candidate alone at the place (its flash; its working set, below)
        ops = [[build_op(c, C_in, C_out, stride, **options) for c in candidates]
               for _, candidates, C_in, C_out, stride, options, _ in first.places]
        self.flash = [[float(flash_bytes(op)) for op in place] for place in ops]
        self.outside_flash = float(flash_bytes(net)) - sum(place[0] for place in self.flash)
        self.decision_flash = [[sum(self.flash[k][i] for k in rows[d]) for i in range(len(self.flash[rows[d][0]]))]
                               for d in self.decisions]  # a decision's places share its one choice
        self.outside_sram, self.held, self.work = 0.0, [0.0] * len(ops), [[0.0] * len(p) for p in ops]
        if resource == "sram_kb":
            self._sram(space, task, shape, first, net, ops)
        self.decision_peak = [[max(self.held[k] + self.work[k][i] for k in rows[d])
                               for i in range(len(self.work[rows[d][0]]))] for d in self.decisions]
        self._tables: dict[Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _sram(self, space: Any, task: Any, shape: tuple[int, ...], first: _OnePerPlace, net: nn.Module,
              ops: list[list[nn.Module]]) -> None:
        """W, H and F (see the module's docstring) from the reference network's schedule."""
        shapes = _input_shapes(net, [p[-1] for p in first.places], shape)
        # each candidate's working set alone at its place, with its input freed after its last reader in the op
        # and (`_Holding`) held to the end
        works = [[[float(sram_bytes(m, at)) for m in (op, _Holding(op))] for op in place]
                 for place, at in zip(ops, shapes, strict=True)]
        # the reference: the heaviest working set with the input held at every place (it shows whether the network
        # holds the input: the op's input dies early inside it); ties: the first; built in the same order
        pick: dict[str, list[str]] = {}
        for (name, candidates, *_), work in zip(first.places, works, strict=True):
            pick.setdefault(name, []).append(candidates[_heaviest(work)])
        ref = _OnePerPlace(pick)
        reference = _network(space, task, ref)
        modules = [p[-1] for p in ref.places]
        steps = activation_steps(reference, shape, marks=modules)
        self.outside_sram = float(max((s.live for s in steps if s.inside < 0), default=0))
        # H[p] and whether p's input is held: the variant whose schedule of the op matches the network's best
        for k, (module, at) in enumerate(zip(modules, shapes, strict=True)):
            self.held[k], holding = _held([s.live for s in steps if s.inside == k], module, at)
            self.work[k] = [w[holding] for w in works[k]]

    # ------------------------------------------------------------------------------------------- expectation

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(flash (D, C), SRAM thresholds v (K,), [peak of decision d with candidate i <= v_k] (D, C, K))."""
        if device not in self._tables:
            width = max(len(c) for c in self.decision_flash)
            flash = torch.tensor([c + [0.0] * (width - len(c)) for c in self.decision_flash], device=device)
            peak = torch.tensor([c + [0.0] * (width - len(c)) for c in self.decision_peak], device=device)
            values = sorted({self.outside_sram, *(v for c in self.decision_peak for v in c if v > self.outside_sram)})
            v = torch.tensor(values, device=device)
            self._tables[device] = (flash, v, (peak[:, :, None] <= v).float())
        return self._tables[device]

    def expected_bytes(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The expectation in bytes for `probs` = {decision: weights over its candidates} (differentiable)."""
        device = next(iter(probs.values())).device
        flash, v, below = self._on(device)
        w = torch.stack([F.pad(probs[d].float(), (0, flash.shape[1] - len(probs[d]))) for d in self.decisions])
        if self.resource == "flash_kb":
            return self.outside_flash + (w * flash).sum()
        # E[peak] = F + sum_k (v_k+1 - v_k) P(peak > v_k), P(peak <= v_k) = prod_d P(peak of d <= v_k)
        cdf = torch.einsum("dc,dck->dk", w, below).prod(0)  # (K,)
        return self.outside_sram + ((v[1:] - v[:-1]) * (1 - cdf[:-1])).sum()

    def largest_bytes(self) -> float:
        """The value at the heaviest candidate of every decision (the normaliser)."""
        if self.resource == "flash_kb":
            return self.outside_flash + sum(max(c) for c in self.decision_flash)
        return max([self.outside_sram, *(max(c) for c in self.decision_peak)])

    def expected_kb(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.expected_bytes(probs) / KB

    def kb(self, supernet: Any) -> torch.Tensor:
        """E[resource] in KB under the supernet's softmax(alpha)."""
        return self.expected_kb({n: F.softmax(supernet.alphas[param_key(n)], dim=-1) for n in supernet.decisions})

    def __call__(self, supernet: Any) -> torch.Tensor:
        """The DARTS loss term: E[resource] under softmax(alpha) / its largest value, in [0, 1]."""
        return self.kb(supernet) * KB / max(self.largest_bytes(), 1.0)
