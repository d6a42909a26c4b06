"""DARTS (Liu et al. 2019) and PC-DARTS (Xu et al. 2020): differentiable search as one strategy.

The supernet is the space's own network with `MixedOp`s in its slots (`nasopt.oneshot.mixed`). The
training split is halved: weights train on one half (SGD, cosine), architecture weights on the other
(Adam), alternating per step. First order uses the architecture half's gradient as is; second order
(`unrolled=True`) differentiates through one virtual SGD step of the weights, with the Hessian-vector
product by central finite differences, as in the paper. PC-DARTS = `partial_channels=K` (channel
sampling + shuffle in the mixed op) with edge normalisation. The TinyML seed's resource-aware penalty
adds `penalty_weight` x expected params ("memory") or MACs ("compute") of the softmax-weighted choice, or
its expected int8 flash ("flash_kb") or SRAM peak ("sram_kb"; `nasopt.oneshot._budget_penalty`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.distributions import CategoricalDistribution
from torch import nn

from nasopt.errors import UserError
from nasopt.oneshot._budget_penalty import RESOURCES, BudgetPenalty
from nasopt.oneshot._shared import (
    DEFAULT_SIGNAL,
    SKIP_OPS,
    LossFn,
    Signal,
    check_output,
    hits,
    rng_state,
    search_loss,
    set_rng_state,
    skip_count,
    split_half,
    validation,
)
from nasopt.oneshot.mixed import MixedChooser, Supernet, candidate_costs, expected_cost, record_spatial
from nasopt.scoring import kind_of
from nasopt.space import random_arch

__all__ = ["DARTS", "build_supernet", "derive", "split_half"]

def build_supernet(space: Any, task: Any, chooser: MixedChooser, *, edge_normalization: bool = False,
                   method: str = "DARTS") -> Supernet:
    """The space's network with mixed ops: `space.supernet` when the space has one (cells whose sampled
    form selects edges), else `space.build` of any architecture, which must then route every decision
    through the chooser (op choices on a fixed edge set)."""
    if hasattr(space, "supernet"):
        net = space.supernet(task, chooser)
    else:
        net = space.build(random_arch(space, seed=0), task, chooser)
        dists = space.distributions()
        other = sorted(set(dists) - set(chooser.decisions))
        non_op = [n for n, d in dists.items() if not isinstance(d, CategoricalDistribution)]
        if other or non_op:
            raise UserError(f"{method} needs a space whose decisions are all op choices on a fixed set of edges, "
                            f"but {type(space).__name__} also decides {', '.join((other or non_op)[:3])} "
                            "(depth, width, ...); use the nano, nb201, darts_cell or conv1d space")
    if not chooser.decisions:
        raise UserError(f"space {type(space).__name__} made no op decision through its chooser; {method} has "
                        "nothing to search")
    return Supernet(net, chooser, edge_normalization=edge_normalization)


def derive(space: Any, supernet: Supernet) -> dict[str, Any]:
    """The discrete architecture of the current weights: `space.derive` (e.g. DARTS' top-2 edges per node)
    when the space defines it, else the most probable candidate of every decision."""
    probs = supernet.probabilities()
    if hasattr(space, "derive"):
        return dict(space.derive(probs))
    return {n: supernet.decisions[n][int(np.argmax(p))] for n, p in probs.items()}


@dataclass(frozen=True, kw_only=True)
class DARTS:
    """Differentiable architecture search as one trial of a study: `StudySpec(strategy=DARTS(...))`.

    epochs, batch_size, lr, lr_min, momentum, weight_decay, grad_clip: the weights' SGD with a cosine
    schedule (DARTS' defaults). arch_lr, arch_weight_decay: Adam on the architecture weights, betas
    (0.5, 0.999). unrolled: second-order gradient, whose Hessian-vector product perturbs the weights
    by a vector of norm hessian_eps (DARTS' 0.01). partial_channels: PC-DARTS' K (1 = DARTS);
    edge_normalization: PC-DARTS' edge weights (default: on when K > 1). penalty: None, "memory"
    (expected params), "compute" (expected MACs), "flash_kb" (expected int8 flash) or "sram_kb" (expected int8
    SRAM peak), each normalised to [0, 1] and weighted by penalty_weight. max_skips: the guard
    against DARTS' collapse into skip-connections: when the derived normal cell holds more,
    skip_guard="stop" ends the search there, "penalize" adds skip_penalty x the skip weights to the
    architecture loss from then on.
    """

    epochs: int = 50
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    unrolled: bool = False
    hessian_eps: float = 0.01
    partial_channels: int = 1
    edge_normalization: bool | None = None
    penalty: str | None = None
    penalty_weight: float = 0.1
    max_skips: int | None = None
    skip_guard: str = "stop"
    skip_penalty: float = 1.0

    def __post_init__(self) -> None:
        rules = [
            (isinstance(self.epochs, int) and self.epochs >= 1, f"`epochs >= 1` must hold, but got epochs={self.epochs!r}"),
            (self.batch_size >= 2, f"`batch_size >= 2` must hold, but got batch_size={self.batch_size!r}"),
            (self.lr > 0 and self.arch_lr > 0, f"learning rates must be > 0, but got lr={self.lr}, arch_lr={self.arch_lr}"),
            (isinstance(self.partial_channels, int) and self.partial_channels >= 1,
             f"`partial_channels >= 1` must hold, but got partial_channels={self.partial_channels!r}"),
            (self.penalty in (None, "memory", "compute", *RESOURCES),
             f"unknown penalty {self.penalty!r}; use None, 'memory' (params), 'compute' (MACs), 'flash_kb' or "
             "'sram_kb' (int8 budgets)"),
            (self.skip_guard in ("stop", "penalize"), f"unknown skip_guard {self.skip_guard!r}; use 'stop' or 'penalize'"),
            (self.max_skips is None or self.max_skips >= 0, f"`max_skips >= 0` must hold, but got {self.max_skips!r}"),
        ]
        for ok, message in rules:
            if not ok:
                raise UserError(message)

    @property
    def label(self) -> str:
        name = "pc_darts" if self.partial_channels > 1 else "darts"
        return f"{name}{'_2nd' if self.unrolled else ''}" + (f"_k{self.partial_channels}" if self.partial_channels > 1 else "")

    @property
    def normalize_edges(self) -> bool:
        return self.partial_channels > 1 if self.edge_normalization is None else self.edge_normalization

    def config(self) -> dict[str, Any]:
        return {"method": type(self).__name__, "label": self.label, **asdict(self)}

    def check(self, space: Any, task: Any) -> None:
        """Raise UserError before anything is stored when this method cannot search `space` on `task`."""
        net = build_supernet(space, task, MixedChooser(self.partial_channels),
                             edge_normalization=self.normalize_edges, method=self.label)
        check_output(net, task, self.label, space)
        split_half(task.train, 0)
        if self.penalty in RESOURCES:  # counted on the space's network before anything is stored
            BudgetPenalty(self.penalty, space, task)

    # -------------------------------------------------------------------------------------------- search

    def search(self, space: Any, task: Any, *, seed: int, resume: Mapping[str, Any] | None = None,
               on_epoch: Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None] | None = None,
               progress: Callable[[int, int], None] | None = None,
               signal: Signal = DEFAULT_SIGNAL) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run the search; returns (derived architecture, summary).

        Weights and alphas train on the task's loss (`search_loss`). `on_epoch(record, state)` gets each
        epoch's record (supernet train accuracy and loss, its validation (`validation`: accuracy for a
        classification, else the task's evaluation and `valid_score`, the study's first per-epoch objective
        `signal` = (curve entry, sign)), alpha entropy, skips in the derived normal cell, the softmax
        weights) and a function returning the full checkpoint; `resume` is such a checkpoint, to continue
        after its epoch.
        """
        torch.manual_seed(seed)
        chooser = MixedChooser(self.partial_channels)
        supernet = build_supernet(space, task, chooser, edge_normalization=self.normalize_edges,
                                  method=self.label).to(task.device)
        w_opt, a_opt = self.optimizers(supernet)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, self.epochs, eta_min=self.lr_min)
        loss_fn, kind = search_loss(task), kind_of(task)
        w_split, a_split = split_half(task.train, seed)
        if min(len(w_split), len(a_split)) < 2:
            raise UserError(f"{len(task.train)} training examples are too few for a one-shot search; use more data")
        costs: Any = None
        if self.penalty in RESOURCES:  # expected int8 flash or SRAM: a callable of the supernet
            costs = BudgetPenalty(self.penalty, space, task)
        elif self.penalty is not None:
            example = next(iter(task.val.batches(1)))[0]
            spatial: Any = record_spatial(supernet, example) if self.penalty == "compute" else None
            costs = candidate_costs(chooser, self.penalty, spatial)
        generator = torch.Generator().manual_seed(seed + 1)
        history: list[dict[str, Any]] = []
        start, skip_on = 1, False
        if resume is not None:
            supernet.load_state_dict(resume["model"])
            w_opt.load_state_dict(resume["w_opt"])
            a_opt.load_state_dict(resume["a_opt"])
            sched.load_state_dict(resume["sched"])
            generator.set_state(resume["generator"])
            set_rng_state(resume["rng"])
            history, start, skip_on = list(resume["history"]), int(resume["epoch"]) + 1, bool(resume["skip_on"])
        stopped = ""
        for epoch in range(start, self.epochs + 1):
            seen, correct, positions, loss_sum = 0, 0, 0, 0.0
            a_batches = a_split.batches(self.batch_size, shuffle=True, generator=generator, drop_last=True)
            for (xw, yw), (xa, ya) in zip(w_split.batches(self.batch_size, shuffle=True, generator=generator,
                                                          drop_last=True), a_batches, strict=False):
                logits, loss = self.step(supernet, w_opt, a_opt, (xw, yw), (xa, ya), costs, skip_on, loss_fn=loss_fn)
                seen += len(yw)
                hit, counted = hits(logits, yw, kind)
                correct, positions = correct + hit, positions + counted
                loss_sum += float(loss.detach()) * len(yw)
            sched.step()
            if not math.isfinite(loss_sum):
                raise optuna.TrialPruned(f"non-finite supernet loss in search epoch {epoch}")
            arch = derive(space, supernet)
            skips = skip_count(arch)
            train_acc = {"train_acc": round(correct / max(positions, 1), 6)} if kind != "regress" else {}
            record = {"epoch": epoch, **train_acc, "train_loss": round(float(loss_sum) / max(seen, 1), 6),
                      **validation(supernet, task.val, task, signal),
                      "alpha_entropy": round(supernet.entropy(), 6), "skips": skips,
                      "lr": round(float(sched.get_last_lr()[0]), 6), "weights": supernet.probabilities(),
                      "arch": arch}
            if costs is not None:
                with torch.no_grad():
                    record["expected_cost"] = round(float(penalty_term(supernet, costs)), 6)
                    if isinstance(costs, BudgetPenalty):  # e.g. expected_sram_kb
                        record[f"expected_{self.penalty}"] = round(float(costs.kb(supernet)), 4)
            if self.max_skips is not None and skips > self.max_skips:
                if self.skip_guard == "stop":
                    stopped = f"stopped at epoch {epoch}: {skips} skip-connections > max_skips={self.max_skips}"
                    record["guard"] = stopped
                elif not skip_on:
                    skip_on = True
                    record["guard"] = f"skip penalty on from epoch {epoch}: {skips} skips > {self.max_skips}"
            history.append({k: v for k, v in record.items() if k not in ("weights", "arch")})
            if on_epoch is not None:
                def state(epoch: int = epoch, skip_on: bool = skip_on) -> dict[str, Any]:
                    return {"model": supernet.state_dict(), "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
                            "sched": sched.state_dict(), "generator": generator.get_state(), "rng": rng_state(),
                            "history": history, "epoch": epoch, "skip_on": skip_on}
                on_epoch(record, state)
            if progress is not None:
                progress(epoch, self.epochs)
            if stopped:
                break
        arch = derive(space, supernet)
        return arch, {"history": history, "stopped": stopped, "epochs_run": len(history)}

    def step(self, supernet: Supernet, w_opt: torch.optim.Optimizer, a_opt: torch.optim.Optimizer,
             w_batch: tuple[torch.Tensor, torch.Tensor], a_batch: tuple[torch.Tensor, torch.Tensor],
             costs: Any = None, skip_on: bool = False, *,
             loss_fn: LossFn = F.cross_entropy) -> tuple[torch.Tensor, torch.Tensor]:
        """One search step: the architecture update on `a_batch`, then the weight update on `w_batch`, both
        on `loss_fn` (the task's, `search_loss`). Returns the weight step's output and loss. The architecture
        weights' .grad stays the gradient of their update (the weight pass computes none for them)."""
        (xw, yw), (xa, ya) = w_batch, a_batch
        a_opt.zero_grad(set_to_none=True)
        if self.unrolled:
            self.unrolled_backward(supernet, w_opt, xw, yw, xa, ya, costs, skip_on, loss_fn=loss_fn)
        else:
            self.arch_backward(supernet, xa, ya, costs, skip_on, loss_fn)
        a_opt.step()
        w_opt.zero_grad(set_to_none=True)
        with frozen(supernet.arch_parameters()):  # the weights' gradient only: the architecture's is not used
            logits = supernet(xw)
            loss = loss_fn(logits, yw)
            loss.backward()
        nn.utils.clip_grad_norm_(supernet.weight_parameters(), self.grad_clip)
        w_opt.step()
        return logits, loss

    def optimizers(self, supernet: Supernet) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """SGD on the weights, Adam on the architecture weights (DARTS' settings)."""
        w_opt = torch.optim.SGD(supernet.weight_parameters(), lr=self.lr, momentum=self.momentum,
                                weight_decay=self.weight_decay)
        a_opt = torch.optim.Adam(supernet.arch_parameters(), lr=self.arch_lr, betas=(0.5, 0.999),
                                 weight_decay=self.arch_weight_decay)
        return w_opt, a_opt

    def arch_backward(self, supernet: Supernet, x: torch.Tensor, y: torch.Tensor, costs: Any, skip_on: bool,
                      loss_fn: LossFn) -> None:
        """Set the architecture weights' .grad to the first-order gradient of the architecture loss, and only
        theirs: the weights do not require gradients meanwhile (their .grad would be set to None before the
        weight step anyway), so no op computes a weight gradient or keeps what only one needs."""
        alphas, weights = supernet.arch_parameters(), supernet.weight_parameters()
        with frozen(weights):
            loss = self._arch_loss(supernet, x, y, costs, skip_on, loss_fn)
            grads = torch.autograd.grad(loss, alphas, allow_unused=True)
        for a, g in zip(alphas, grads, strict=True):
            a.grad = g

    def _arch_loss(self, supernet: Supernet, x: torch.Tensor, y: torch.Tensor,
                   costs: Any, skip_on: bool, loss_fn: LossFn) -> torch.Tensor:
        loss = loss_fn(supernet(x), y)
        if costs is not None:
            loss = loss + self.penalty_weight * penalty_term(supernet, costs)
        if skip_on:
            loss = loss + self.skip_penalty * skip_weight(supernet)
        return loss

    def unrolled_backward(self, supernet: Supernet, w_opt: torch.optim.Optimizer, xw: torch.Tensor,
                          yw: torch.Tensor, xa: torch.Tensor, ya: torch.Tensor,
                          costs: Any = None, skip_on: bool = False, *,
                          loss_fn: LossFn = F.cross_entropy) -> None:
        """Set alpha.grad to the second-order DARTS gradient of L_val(w - eta * dL_train/dw, alpha).

        d/dalpha = dL_val(w', alpha)/dalpha - eta * (d2 L_train / dalpha dw) . dL_val(w', alpha)/dw',
        the Hessian-vector product by central differences at w +- eps * v, eps = hessian_eps / |v|.
        """
        weights, alphas = supernet.weight_parameters(), supernet.arch_parameters()
        eta = w_opt.param_groups[0]["lr"]
        with frozen(alphas):  # the weights' gradient only
            grads = torch.autograd.grad(loss_fn(supernet(xw), yw), weights, allow_unused=True)
        backup = [w.detach().clone() for w in weights]
        with torch.no_grad():  # the virtual step w' = w - eta * (momentum * buffer + grad + wd * w)
            for w, g in zip(weights, grads, strict=True):
                step = (g if g is not None else torch.zeros_like(w)) + self.weight_decay * w
                buffer = w_opt.state.get(w, {}).get("momentum_buffer")
                if buffer is not None:
                    step = step + self.momentum * buffer
                w.sub_(eta * step)
        loss = self._arch_loss(supernet, xa, ya, costs, skip_on, loss_fn)
        out = torch.autograd.grad(loss, alphas + weights, allow_unused=True)
        d_alpha = [g if g is not None else torch.zeros_like(a) for g, a in zip(out[:len(alphas)], alphas, strict=True)]
        v = [g if g is not None else torch.zeros_like(w) for g, w in zip(out[len(alphas):], weights, strict=True)]
        norm = torch.sqrt(sum((g * g).sum() for g in v))  # type: ignore[arg-type]
        eps = self.hessian_eps / float(norm) if float(norm) > 0 else 0.0

        def alpha_grad_at(sign: float) -> list[torch.Tensor]:
            with torch.no_grad():
                for w, b, g in zip(weights, backup, v, strict=True):
                    w.copy_(b + sign * eps * g)
            with frozen(weights):  # the architecture's gradient only (see `arch_backward`)
                g_alpha = torch.autograd.grad(loss_fn(supernet(xw), yw), alphas, allow_unused=True)
            return [g if g is not None else torch.zeros_like(a) for g, a in zip(g_alpha, alphas, strict=True)]

        if eps > 0:
            plus, minus = alpha_grad_at(1.0), alpha_grad_at(-1.0)
            hvp = [(p - m) / (2 * eps) for p, m in zip(plus, minus, strict=True)]
        else:
            hvp = [torch.zeros_like(a) for a in alphas]
        with torch.no_grad():
            for w, b in zip(weights, backup, strict=True):
                w.copy_(b)
        for a, d, h in zip(alphas, d_alpha, hvp, strict=True):
            a.grad = d - eta * h


@contextlib.contextmanager
def frozen(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """`params` do not require gradients meanwhile (restored after, also on error): a pass that needs the
    gradient of other tensors only computes no gradient for these, custom autograd Functions included."""
    needed = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, need in zip(params, needed, strict=True):
            p.requires_grad_(need)


def penalty_term(supernet: Supernet, costs: Any) -> torch.Tensor:
    """The resource penalty in [0, 1]: a `BudgetPenalty` of the supernet, else `expected_cost` of a table of
    per-candidate costs (params or MACs)."""
    return costs(supernet) if isinstance(costs, BudgetPenalty) else expected_cost(supernet, costs)


def skip_weight(supernet: Supernet) -> torch.Tensor:
    """The summed softmax weight of skip-connections over the normal cell's decisions."""
    weights = supernet.op_weights()
    names = [n for n in weights if n.startswith("normal.")] or list(weights)
    terms = [weights[n][supernet.decisions[n].index(op)] for n in names for op in SKIP_OPS
             if op in supernet.decisions[n]]
    return torch.stack(terms).sum() if terms else torch.zeros(())
