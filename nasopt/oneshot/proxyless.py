"""ProxylessNAS (Cai, Zhu & Han, ICLR 2019): binarised paths and a latency table, as one trial of a study.

The supernet is the space's own network with a `BinaryGateOp` (a `MixedOp` that runs only sampled
paths) in every slot, so a step holds the activations of one path per decision, not of all of them:

- weight step (one half of the training split): one path per decision, sampled from softmax(alpha);
  only that path runs and trains, as in a single-path network.
- architecture step (the other half): two paths per decision, sampled from softmax(alpha) without
  replacement; the two compete as if they were the only candidates. One of them (drawn from their
  renormalised probabilities) is active, the other's output is computed without keeping its activations.
  The binary gates g = (1, 0) get dL/dg_j = <dL/d(output), output_j> and alpha gets
  dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i) over the pair (the paper's estimator, written as a
  straight-through gate); after the Adam step (betas (0, 0.999)) the pair's two logits are shifted so
  that their total probability is unchanged, which leaves the other paths' probabilities as they were.

Latency: a `nasopt.measure._latency_table.LatencyTable` gives every candidate's latency at its slot's shape, so
the expected latency E[LAT] = fixed part + sum over decisions of softmax(alpha) . latencies is
differentiable in alpha. With `latency_target_ms=T` the architecture loss is

    CE x max(1, E[LAT] / T) ** latency_weight

with CE the task's loss (the user's, else cross-entropy, or MSE for a regression; `search_loss`): the
paper's multiplicative form CE x (LAT / T) ** beta, applied above the target only: below T accuracy
alone decides, so T acts as a target (with the plain form the gradient's direction does not depend on T
at all, only its scale, which Adam divides out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.distributions import CategoricalDistribution
from torch import nn

from nasopt.errors import UserError
from nasopt.measure._latency_table import LatencyTable, default_path, record_slots
from nasopt.oneshot._proxyless_ops import BinaryChooser, BinaryGateOp, BinaryGates, LatencyModel
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
    split_half,
    validation,
)
from nasopt.oneshot.mixed import Supernet
from nasopt.scoring import kind_of
from nasopt.space import Chooser, random_arch

__all__ = ["ProxylessNAS", "BinaryGateOp", "BinaryChooser", "BinaryGates", "LatencyModel", "SUPPORTED_SPACES"]

SUPPORTED_SPACES = "mobile (depth through its `skip` candidates, at one width), nano, nb201"


@dataclass(frozen=True, kw_only=True)
class ProxylessNAS:
    """ProxylessNAS as one trial of a study: `StudySpec(strategy=ProxylessNAS(...))`.

    epochs, batch_size, lr, lr_min, momentum, weight_decay, grad_clip: the weights' SGD with a cosine
    schedule. arch_lr: Adam on the architecture weights, betas (0, 0.999) as in the paper. warmup_epochs:
    epochs that train only the weights (uniformly sampled paths at first) before architecture updates.
    width: the mobile space's width to search at (default its largest). latency_table: the JSON file of
    `nasopt latency-table` (default `latency_<space>_<device>.json` in the working directory);
    latency_target_ms: the target T of the architecture loss CE x max(1, E[LAT]/T) ** latency_weight
    (None: no latency term; a table, when present, still reports the expected and predicted latency);
    latency_device: the hardware the table must have been measured on (default the study's device).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 4e-5
    grad_clip: float = 5.0
    arch_lr: float = 1e-3
    warmup_epochs: int = 0
    width: float | None = None
    latency_table: str | None = None
    latency_target_ms: float | None = None
    latency_weight: float = 0.6
    latency_device: str | None = None

    def __post_init__(self) -> None:
        rules = [
            (isinstance(self.epochs, int) and self.epochs >= 1, f"`epochs >= 1` must hold, but got epochs={self.epochs!r}"),
            (self.batch_size >= 2, f"`batch_size >= 2` must hold, but got batch_size={self.batch_size!r}"),
            (self.lr > 0 and self.arch_lr > 0, f"learning rates must be > 0, but got lr={self.lr}, arch_lr={self.arch_lr}"),
            (isinstance(self.warmup_epochs, int) and 0 <= self.warmup_epochs < self.epochs,
             f"`0 <= warmup_epochs < epochs` must hold, but got warmup_epochs={self.warmup_epochs!r}, epochs={self.epochs!r}"),
            (self.latency_target_ms is None or self.latency_target_ms > 0,
             f"`latency_target_ms > 0` must hold, but got latency_target_ms={self.latency_target_ms!r}"),
            (self.latency_weight >= 0, f"`latency_weight >= 0` must hold, but got latency_weight={self.latency_weight!r}"),
        ]
        for ok, message in rules:
            if not ok:
                raise UserError(message)

    @property
    def label(self) -> str:
        return "proxyless"

    def config(self) -> dict[str, Any]:
        return {"method": type(self).__name__, "label": self.label, **asdict(self)}

    # ------------------------------------------------------------------------------------ supernet, latency

    def _kwargs(self, space: Any) -> dict[str, Any]:
        if self.width is None:
            return {}
        if not hasattr(space, "widths"):
            raise UserError(f"width={self.width} applies to spaces with a width choice (mobile), but "
                            f"{type(space).__name__} has none; leave width=None")
        return {"width": self.width}

    def _build(self, space: Any, task: Any, choose: Chooser) -> nn.Module:
        """The supernet through `choose`: `space.supernet` (mobile), else `space.build` of any architecture of a
        space whose decisions are all op choices (nano, nb201). Other spaces are refused with the list."""
        name = type(space).__name__
        if hasattr(space, "supernet"):
            if hasattr(space, "edge_names"):  # DARTS cells: node inputs are chosen among all edges
                raise UserError(f"ProxylessNAS cannot search {name}: its supernet selects edges (DARTS' top-2 rule), "
                                f"which a binarised path per edge does not express; it searches {SUPPORTED_SPACES}")
            return space.supernet(task, choose, **self._kwargs(space))
        non_op = [n for n, d in space.distributions().items() if not isinstance(d, CategoricalDistribution)]
        if non_op:
            raise UserError(f"ProxylessNAS cannot search {name}: it decides {', '.join(non_op[:3])} and has no "
                            f"supernet form; it searches {SUPPORTED_SPACES}")
        self._kwargs(space)
        return space.build(random_arch(space, seed=0), task, choose)

    @staticmethod
    def _check_routed(space: Any, decisions: Any) -> None:
        unrouted = set(space.distributions()) - set(decisions)
        if not hasattr(space, "supernet") and unrouted:
            raise UserError(f"ProxylessNAS cannot search {type(space).__name__}: {sorted(unrouted)[0]!r} is not an op "
                            f"choice through its chooser; it searches {SUPPORTED_SPACES}")
        if not decisions:
            raise UserError(f"space {type(space).__name__} made no op decision through its chooser; ProxylessNAS "
                            "has nothing to search")

    def supernet(self, space: Any, task: Any) -> tuple[Supernet, BinaryGates]:
        """The binary-gated supernet of `space` (on the CPU) and its gates."""
        chooser = BinaryChooser()
        net = self._build(space, task, chooser)
        self._check_routed(space, chooser.decisions)
        supernet = Supernet(net, chooser)
        return supernet, BinaryGates(supernet, [op for op in chooser.ops if isinstance(op, BinaryGateOp)])

    def derive(self, space: Any, weights: Mapping[str, Any], candidates: Mapping[str, Any]) -> dict[str, Any]:
        """The most probable candidate per decision, in the space's sampled param form (`space.derive` where
        the space has one, else the candidate itself, `candidates[name]` listing them)."""
        if hasattr(space, "derive"):
            return dict(space.derive(weights, **self._kwargs(space)))
        return {n: candidates[n][int(np.argmax(w))] for n, w in weights.items()}

    def latency_model(self, space: Any, task: Any) -> LatencyModel | None:
        """The table's latencies for every candidate of the supernet, checked against the space, input
        shape and device; None without a table or target. An impossible target is a UserError."""
        device = self.latency_device or torch.device(task.device).type
        path = self.latency_table or str(default_path(space, device))
        if self.latency_table is None and self.latency_target_ms is None:
            return None
        hint = f"build it with `nasopt latency-table --study STUDY.py --device {device} -o {path}`"
        table = LatencyTable.load(path, rebuild=hint)
        table.check(space, task, device)
        slots, _ = record_slots(lambda choose: self._build(space, task, choose), task.input_shape)
        costs: dict[str, list[float]] = {}
        for s in slots:
            if s.spatial is None:
                continue
            row = [table.op_ms(op, s.C_in, s.C_out, s.stride, s.spatial, s.options) for op in s.candidates]
            costs[s.name] = [a + b for a, b in zip(costs.get(s.name, [0.0] * len(row)), row, strict=True)]
        candidates = {s.name: s.candidates for s in slots}
        uniform = {n: [1.0 / len(c)] * len(c) for n, c in costs.items()}
        frame = self.derive(space, uniform, candidates)
        model = LatencyModel(table, table.frame_ms(frame), costs)
        if self.latency_target_ms is not None and self.latency_target_ms < model.minimum_ms:
            at = f" at width {frame['width']:g}" if "width" in frame else ""
            raise UserError(f"latency_target_ms={self.latency_target_ms:g} is impossible: the fastest architecture{at} "
                            f"is predicted at {model.minimum_ms:.4f} ms on {device} ({table.path}); set "
                            f"latency_target_ms >= {model.minimum_ms:.4f}" + (" or a smaller width" if at else ""))
        return model

    def check(self, space: Any, task: Any) -> None:
        """Everything a search needs, checked without training (the space, the data, the latency table, the
        target): the runner calls it before the storage is touched."""
        slots, _ = record_slots(lambda choose: self._build(space, task, choose), task.input_shape)
        self._check_routed(space, {s.name for s in slots})
        if kind_of(task) != "classify":
            check_output(self.supernet(space, task)[0], task, "ProxylessNAS", space)
        split_half(task.train, 0)
        self.latency_model(space, task)

    # -------------------------------------------------------------------------------------------- search

    def optimizers(self, supernet: Supernet) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        w_opt = torch.optim.SGD(supernet.weight_parameters(), lr=self.lr, momentum=self.momentum,
                                weight_decay=self.weight_decay)
        a_opt = torch.optim.Adam(supernet.arch_parameters(), lr=self.arch_lr, betas=(0.0, 0.999), eps=1e-8)
        return w_opt, a_opt

    def weight_step(self, supernet: Supernet, gates: BinaryGates, w_opt: torch.optim.Optimizer,
                    batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator, *,
                    loss_fn: LossFn = F.cross_entropy) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of the single-path network sampled from softmax(alpha) on `loss_fn` (the task's,
        `search_loss`). Returns its output and loss."""
        x, y = batch
        gates.one_path(generator)
        try:
            w_opt.zero_grad(set_to_none=True)
            logits = supernet(x)
            loss = loss_fn(logits, y)
            loss.backward()
            nn.utils.clip_grad_norm_(supernet.weight_parameters(), self.grad_clip)
            w_opt.step()
        finally:
            gates.clear()
        return logits, loss

    def arch_loss(self, logits: torch.Tensor, y: torch.Tensor, supernet: Supernet,
                  latency: LatencyModel | None, loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
        loss = loss_fn(logits, y)
        if latency is not None and self.latency_target_ms is not None:
            ratio = latency.expected(supernet) / self.latency_target_ms
            loss = loss * ratio.clamp_min(1.0) ** self.latency_weight
        return loss

    def arch_step(self, supernet: Supernet, gates: BinaryGates, a_opt: torch.optim.Optimizer,
                  batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator,
                  latency: LatencyModel | None = None, *, loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
        """One architecture update from two sampled paths per decision (binary-gate gradient, rescale), on
        `loss_fn` (the task's) times the latency term."""
        x, y = batch
        weights = supernet.weight_parameters()
        pairs = gates.two_paths(generator)
        try:
            for w in weights:  # only alpha learns here: no weight gradients are kept
                w.requires_grad_(False)
            a_opt.zero_grad(set_to_none=True)
            loss = self.arch_loss(supernet(x), y, supernet, latency, loss_fn)
            loss.backward()
            a_opt.step()
            gates.rescale(pairs)
        finally:
            for w in weights:
                w.requires_grad_(True)
            gates.clear()
        return loss.detach()

    def search(self, space: Any, task: Any, *, seed: int, resume: Mapping[str, Any] | None = None,
               on_epoch: Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None] | None = None,
               progress: Callable[[int, int], None] | None = None,
               signal: Signal = DEFAULT_SIGNAL) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run the search; returns (derived architecture, summary), with the same contract as DARTS.search
        (the task's loss in both steps; the derived path's validation by the task and `signal`)."""
        torch.manual_seed(seed)
        supernet, gates = self.supernet(space, task)
        latency = self.latency_model(space, task)
        supernet = supernet.to(task.device)
        w_opt, a_opt = self.optimizers(supernet)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, self.epochs, eta_min=self.lr_min)
        loss_fn, kind = search_loss(task), kind_of(task)
        w_split, a_split = split_half(task.train, seed)
        if min(len(w_split), len(a_split)) < 2:
            raise UserError(f"{len(task.train)} training examples are too few for a one-shot search; use more data")
        generator = torch.Generator().manual_seed(seed + 1)
        history: list[dict[str, Any]] = []
        start = 1
        if resume is not None:
            supernet.load_state_dict(resume["model"])
            w_opt.load_state_dict(resume["w_opt"])
            a_opt.load_state_dict(resume["a_opt"])
            sched.load_state_dict(resume["sched"])
            generator.set_state(resume["generator"])
            set_rng_state(resume["rng"])
            history, start = list(resume["history"]), int(resume["epoch"]) + 1
        for epoch in range(start, self.epochs + 1):
            seen, correct, positions, loss_sum = 0, 0, 0, 0.0
            a_batches = a_split.batches(self.batch_size, shuffle=True, generator=generator, drop_last=True)
            for (xw, yw), (xa, ya) in zip(w_split.batches(self.batch_size, shuffle=True, generator=generator,
                                                          drop_last=True), a_batches, strict=False):
                logits, loss = self.weight_step(supernet, gates, w_opt, (xw, yw), generator, loss_fn=loss_fn)
                if epoch > self.warmup_epochs:
                    self.arch_step(supernet, gates, a_opt, (xa, ya), generator, latency, loss_fn=loss_fn)
                seen += len(yw)
                hit, counted = hits(logits, yw, kind)
                correct, positions = correct + hit, positions + counted
                loss_sum += float(loss.detach()) * len(yw)
            sched.step()
            if not math.isfinite(loss_sum):
                raise optuna.TrialPruned(f"non-finite supernet loss in search epoch {epoch}")
            record = self._record(space, task, supernet, gates, latency, epoch, (correct, positions, seen, loss_sum),
                                  sched, signal)
            history.append({k: v for k, v in record.items() if k not in ("weights", "arch")})
            if on_epoch is not None:
                def state(epoch: int = epoch) -> dict[str, Any]:
                    return {"model": supernet.state_dict(), "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
                            "sched": sched.state_dict(), "generator": generator.get_state(), "rng": rng_state(),
                            "history": history, "epoch": epoch}
                on_epoch(record, state)
            if progress is not None:
                progress(epoch, self.epochs)
        arch = self.derive(space, supernet.probabilities(), supernet.decisions)
        return arch, {"history": history, "stopped": "", "epochs_run": len(history)}

    def _record(self, space: Any, task: Any, supernet: Supernet, gates: BinaryGates, latency: LatencyModel | None,
                epoch: int, counts: tuple[int, int, int, float], sched: Any, signal: Signal) -> dict[str, Any]:
        correct, positions, seen, loss_sum = counts
        probs = supernet.probabilities()
        gates.most_probable()  # the supernet's validation is that of its derived architecture's path
        try:
            with torch.no_grad():
                valid = validation(supernet, task.val, task, signal)
        finally:
            gates.clear()
        best = {n: supernet.decisions[n][int(np.argmax(p))] for n, p in probs.items()}
        train_acc = {"train_acc": round(correct / max(positions, 1), 6)} if kind_of(task) != "regress" else {}
        record = {"epoch": epoch, **train_acc, "train_loss": round(float(loss_sum) / max(seen, 1), 6), **valid,
                  "alpha_entropy": round(supernet.entropy(), 6), "skips": sum(v in SKIP_OPS for v in best.values()),
                  "lr": round(float(sched.get_last_lr()[0]), 6), "weights": probs,
                  "arch": self.derive(space, probs, supernet.decisions)}
        if latency is not None:
            with torch.no_grad():
                record["expected_latency_ms"] = round(float(latency.expected(supernet)), 6)
            record["predicted_latency_ms"] = round(latency.of(supernet), 6)
            if self.latency_target_ms is not None:
                record["latency_target_ms"] = self.latency_target_ms
        return record

