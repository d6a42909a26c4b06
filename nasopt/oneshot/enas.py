"""ENAS (Pham et al. 2018): a controller samples paths through one shared-weight supernet, as one trial.

The supernet is the space's network with a `MixedOp` in every slot (`nasopt.oneshot.mixed`), run in its
single-path mode: a slot holds every candidate's weights, but a forward pass runs only the candidates of
the architecture selected for it. The controller (`nasopt.oneshot.controller`) samples architectures in
the space's own sampled form, so the derived architecture is recorded as the trial's params exactly as a
sampler's would be. Every epoch alternates two phases:

1. shared weights: one pass over one half of the training split (SGD, cosine schedule, as DARTS'
   weights); every minibatch trains the path of a freshly sampled architecture;
2. controller: `controller_steps` REINFORCE updates, each on `controller_batch` sampled architectures;
   an architecture's reward is its accuracy through the shared weights on a minibatch of the other half
   (a task that is no classification: its score, higher is better: the study's first per-epoch objective
   with its sign, else minus the validation loss).

The architecture derived after each epoch is the best of `derive_samples` sampled architectures by
reward on a fixed held-out set (up to 8 batches of the other half). Rewards use batch statistics
(BatchNorm in training mode): the running statistics mix every path that ever ran. The shared weights
train on the task's loss (`search_loss`).

How a sampled architecture maps onto the supernet:

- spaces whose sampled form picks a node's inputs (`{node}.in{j}` and `{node}.op{j}`: darts_cell,
  conv1d) run on their `supernet`, which has one slot per edge `{node}.e{i}` (the node reads state i).
  Edge i runs the ops of the inputs j that read state i (two when both read it), every other edge its
  `none` candidate, so the sampled cell computes exactly the evaluation cell that `build` makes.
- every other space (nano, nb201, mobile) runs on its own `build`: the `build` of the architecture is
  walked with a recording chooser, and each slot runs the op `build` chose for it. Blocks past a variable
  depth are the `skip` candidate of their slot, so mobile's depth is a choice of skip paths. This needs
  every architecture to have the same slots and the same shapes outside them: a decision that changes
  channel counts (mobile's `width` when it has several widths) or the number of slots (the layers
  space) cannot share one network, and the search stops before training with a UserError naming it.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
import torch
from torch import nn

from nasopt.errors import UserError
from nasopt.oneshot._shared import (
    DEFAULT_SIGNAL,
    EDGE,
    Signal,
    check_output,
    hits,
    path_score,
    rng_state,
    score,
    search_loss,
    set_rng_state,
    skip_count,
    split_half,
    valid_entries,
)
from nasopt.oneshot.controller import Controller, StandInTrial
from nasopt.oneshot.mixed import MixedChooser, MixedOp
from nasopt.scoring import kind_of
from nasopt.space import arch_key, random_arch

__all__ = ["ENAS", "SharedSupernet", "build_shared"]

_WORKS = "nano, nb201, darts_cell, conv1d, or mobile with a single width"
_CHECKS = 8  # random architectures compared with the supernet's slots before the search starts
_CACHE = 4096  # paths remembered per architecture (building a network to record them takes a moment)

_INPUT = re.compile(r"^.+\.in\d+$")  # a cell decision that picks a node's input (darts_cell, conv1d)

Paths = list[tuple[int, ...]]


class SharedSupernet(nn.Module):
    """The space's network with single-path `MixedOp`s; `select(arch)` picks the path of the next passes."""

    def __init__(self, net: nn.Module, ops: Sequence[MixedOp], to_paths: Callable[[Mapping[str, Any]], Paths]) -> None:
        super().__init__()
        self.net = net
        self._mixed = list(ops)
        self.to_paths = to_paths

    def select(self, arch: Mapping[str, Any]) -> None:
        for op, path in zip(self._mixed, self.to_paths(arch), strict=True):
            op.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class _Recorder:
    """A Chooser that builds nothing (an identity per slot) and records every slot and its chosen op."""

    def __init__(self) -> None:
        self.slots: list[tuple[Any, ...]] = []
        self.chosen: list[Any] = []

    def __call__(self, name: str, candidates: Sequence[str], chosen: Any, C_in: int, C_out: int, stride: int,
                 **options: Any) -> nn.Module:
        self.slots.append((name, tuple(candidates), C_in, C_out, stride, tuple(sorted(
            (k, repr(v)) for k, v in options.items()))))
        self.chosen.append(chosen)
        return nn.Identity()


def _record(space: Any, arch: Mapping[str, Any], task: Any) -> tuple[tuple[Any, ...], list[Any]]:
    """(signature, chosen ops) of `arch`: the slots with their shapes, and the shapes of everything else."""
    recorder = _Recorder()
    net = space.build(arch, task, recorder)
    skeleton = tuple((k, tuple(v.shape)) for k, v in net.state_dict().items())
    return (tuple(recorder.slots), skeleton), recorder.chosen


def _culprit(space: Any, task: Any, base: Mapping[str, Any], other: Mapping[str, Any], reference: Any) -> list[str]:
    """The decisions of `other` that, each alone in `base`, change the network's signature."""
    found = []
    for name in [n for n in other if base.get(n) != other[n]]:
        def answer(n: str, _: Any, name: str = name) -> Any:
            return other[n] if n == name or n not in base else base[n]

        trial = StandInTrial(answer)
        try:
            space.suggest(trial)
            if _record(space, trial.params, task)[0] != reference:
                found.append(name)
        except Exception:  # a mixed architecture the space rejects says nothing about this decision
            continue
    return found or [n for n in other if base.get(n) != other[n]][:3]


def _recorded_paths(space: Any, task: Any, arch0: Mapping[str, Any], ops: Sequence[MixedOp]
                    ) -> Callable[[Mapping[str, Any]], Paths]:
    reference, _ = _record(space, arch0, task)
    cache: dict[str, Paths] = {}

    def to_paths(arch: Mapping[str, Any]) -> Paths:
        key = arch_key(arch)
        if key not in cache:
            signature, chosen = _record(space, arch, task)
            if signature != reference:
                culprits = _culprit(space, task, arch0, arch, reference)
                names = ", ".join(f"`{n}`" for n in culprits)
                verb, it = ("changes", "it") if len(culprits) == 1 else ("change", "them")
                raise UserError(f"ENAS trains one shared network for every architecture, so a decision may only pick "
                                f"the op of a slot, but {type(space).__name__}'s {names} {verb} the network's shape; "
                                f"fix {it} to one value in the space's settings (e.g. MobileSpace(widths=(1.0,))) "
                                f"or use a space ENAS can search: {_WORKS}")
            if len(cache) >= _CACHE:
                cache.clear()
            cache[key] = [(op.candidates.index(c),) for op, c in zip(ops, chosen, strict=True)]
        return cache[key]

    return to_paths


def _edge_paths(space: Any, ops: Sequence[MixedOp]) -> Callable[[Mapping[str, Any]], Paths]:
    edges = []
    for op in ops:
        match = EDGE.match(op.name)
        if match is None or "none" not in op.candidates:
            raise UserError(f"ENAS maps a sampled cell onto a supernet whose slots are edges `<node>.e<i>` with a "
                            f"`none` candidate, but {type(space).__name__}.supernet has slot {op.name!r} "
                            f"({', '.join(op.candidates)}); use a space ENAS can search: {_WORKS}")
        edges.append((match["node"], int(match["index"]), op.candidates))

    def to_paths(arch: Mapping[str, Any]) -> Paths:
        paths = []
        for node, i, candidates in edges:
            picked, j = [], 0
            while f"{node}.in{j}" in arch:
                if int(arch[f"{node}.in{j}"]) == i:
                    picked.append(candidates.index(arch[f"{node}.op{j}"]))
                j += 1
            if j == 0:
                raise UserError(f"ENAS maps `{node}.in<j>`/`{node}.op<j>` decisions onto the supernet's edges, but "
                                f"{type(space).__name__}'s architectures have none for node {node!r}; use a space "
                                f"ENAS can search: {_WORKS}")
            paths.append(tuple(picked) or (candidates.index("none"),))
        return paths

    return to_paths


def build_shared(space: Any, task: Any) -> SharedSupernet:
    """The shared-weight supernet of `space` (module docstring: how architectures map onto it)."""
    chooser = MixedChooser()
    arch0 = random_arch(space, seed=0)
    if hasattr(space, "supernet") and any(_INPUT.match(name) for name in arch0):
        net = space.supernet(task, chooser)
        to_paths = _edge_paths(space, chooser.ops)
    else:
        net = space.build(arch0, task, chooser)
        to_paths = _recorded_paths(space, task, arch0, chooser.ops)
    if not chooser.ops:
        raise UserError(f"space {type(space).__name__} made no op decision through its chooser; ENAS has nothing "
                        f"to search (it can search: {_WORKS})")
    for seed in range(1, _CHECKS + 1):  # fail before training, not in the middle of the search
        try:
            to_paths(random_arch(space, seed=seed))
        except (KeyError, ValueError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"ENAS cannot map {type(space).__name__}'s architectures onto its supernet "
                            f"({type(e).__name__}: {e}); use a space ENAS can search: {_WORKS}") from None
    return SharedSupernet(net, chooser.ops, to_paths)


def _scored(net: SharedSupernet, arch: Mapping[str, Any], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            task: Any) -> dict[str, float]:
    """`arch` through the shared weights on `batches` (batch statistics): its accuracy, or the task's evaluation."""
    net.select(arch)
    return path_score(net, batches, task)


def _cycle(split: Any, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from split.batches(batch_size, shuffle=True, generator=generator, drop_last=True)


@dataclass(frozen=True, kw_only=True)
class ENAS:
    """Efficient NAS by parameter sharing as one trial of a study: `StudySpec(strategy=ENAS(...))`.

    epochs, batch_size, lr, lr_min, momentum, weight_decay, grad_clip: the shared weights' SGD with a cosine
    schedule. controller_lr (Adam), controller_steps (updates per epoch), controller_batch (architectures
    per update), entropy_weight, baseline_decay, hidden: the controller's REINFORCE (`Controller`).
    derive_samples: N of "the best of N sampled architectures" that each epoch derives.
    """

    epochs: int = 50
    batch_size: int = 64
    lr: float = 0.05
    lr_min: float = 0.0005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    controller_lr: float = 3.5e-3
    controller_steps: int = 10
    controller_batch: int = 10
    entropy_weight: float = 1e-4
    baseline_decay: float = 0.95
    hidden: int = 64
    derive_samples: int = 10

    def __post_init__(self) -> None:
        rules = [
            (isinstance(self.epochs, int) and self.epochs >= 1, f"`epochs >= 1` must hold, but got epochs={self.epochs!r}"),
            (self.batch_size >= 2, f"`batch_size >= 2` must hold, but got batch_size={self.batch_size!r}"),
            (self.lr > 0 and self.controller_lr > 0,
             f"learning rates must be > 0, but got lr={self.lr}, controller_lr={self.controller_lr}"),
            (self.controller_steps >= 0, f"`controller_steps >= 0` must hold, but got {self.controller_steps!r}"),
            (self.controller_batch >= 1, f"`controller_batch >= 1` must hold, but got {self.controller_batch!r}"),
            (self.derive_samples >= 1, f"`derive_samples >= 1` must hold, but got {self.derive_samples!r}"),
        ]
        for ok, message in rules:
            if not ok:
                raise UserError(message)

    @property
    def label(self) -> str:
        return "enas"

    def config(self) -> dict[str, Any]:
        return {"method": type(self).__name__, "label": self.label, **asdict(self)}

    def check(self, space: Any, task: Any) -> None:
        """Raise UserError before anything is stored when ENAS cannot search `space` on `task`."""
        net = build_shared(space, task)
        if kind_of(task) != "classify":  # a dense task needs a dense head
            net.select(random_arch(space, seed=0))
            check_output(net, task, "ENAS", space)
        Controller(space, hidden=self.hidden, lr=self.controller_lr)
        self._halves(task, 0)

    def _halves(self, task: Any, seed: int) -> tuple[Any, Any]:
        """The training split's halves: the shared weights' and the controller's."""
        w_split, c_split = split_half(task.train, seed)
        if min(len(w_split), len(c_split)) < self.batch_size:
            raise UserError(f"{len(task.train)} training examples are too few for ENAS with batch_size="
                            f"{self.batch_size} (each half needs a batch); use more data or a smaller batch_size")
        return w_split, c_split

    def search(self, space: Any, task: Any, *, seed: int, resume: Mapping[str, Any] | None = None,
               on_epoch: Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None] | None = None,
               progress: Callable[[int, int], None] | None = None,
               signal: Signal = DEFAULT_SIGNAL) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run the search; returns (derived architecture, summary), with DARTS' `on_epoch`/`resume` contract;
        `signal` = (curve entry, sign) is the study's first per-epoch objective, the reward of a task that is
        no classification.

        The record's `alpha_entropy` is the controller's mean per-decision entropy over the epoch's updates,
        `weights` the controller's marginal probability of every value per decision (`Controller.marginals`),
        `reward` the mean reward of its updates and `arch` the derived architecture.
        """
        torch.manual_seed(seed)
        net = build_shared(space, task).to(task.device)
        controller = Controller(space, hidden=self.hidden, lr=self.controller_lr, entropy_weight=self.entropy_weight,
                                baseline_decay=self.baseline_decay, seed=seed).to(task.device)
        w_opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, self.epochs, eta_min=self.lr_min)
        w_split, c_split = self._halves(task, seed)
        held = list(itertools.islice(c_split.batches(self.batch_size), 8))  # ranks the derive candidates
        generator = torch.Generator().manual_seed(seed + 1)
        history: list[dict[str, Any]] = []
        start = 1
        if resume is not None:
            net.load_state_dict(resume["model"])
            controller.load_state_dict(resume["controller"])
            w_opt.load_state_dict(resume["w_opt"])
            controller.optimizer.load_state_dict(resume["c_opt"])
            sched.load_state_dict(resume["sched"])
            generator.set_state(resume["generator"])
            controller.generator.set_state(resume["c_generator"])
            set_rng_state(resume["rng"])
            history, start = list(resume["history"]), int(resume["epoch"]) + 1
        arch: dict[str, Any] = dict(resume["arch"]) if resume is not None and "arch" in resume else {}
        for epoch in range(start, self.epochs + 1):
            train = self._train_shared(net, controller, w_opt, w_split, generator, task)
            sched.step()
            if not math.isfinite(train["loss"]):
                raise optuna.TrialPruned(f"non-finite shared-weight loss in search epoch {epoch}")
            rewards, entropies = [], []
            batches = _cycle(c_split, self.batch_size, generator)
            for _ in range(self.controller_steps):
                archs = controller.sample(self.controller_batch)
                stats = controller.update(archs, [score(_scored(net, a, [next(batches)], task), task, signal)
                                                  for a in archs])
                rewards.append(stats["reward"])
                entropies.append(stats["entropy"])
            arch = self.derive(net, controller, held, task, signal)
            record = {"epoch": epoch, **{f"train_{k}": round(v, 6) for k, v in train.items()},
                      **valid_entries(_scored(net, arch, task.val.batches(self.batch_size), task), task, signal),
                      "alpha_entropy": round(sum(entropies) / len(entropies) if entropies else
                                             controller_entropy(controller), 6),
                      "skips": skip_count(arch), "lr": round(float(sched.get_last_lr()[0]), 6),
                      "reward": round(sum(rewards) / len(rewards), 6) if rewards else None,
                      "weights": controller.marginals(32), "arch": arch}
            history.append({k: v for k, v in record.items() if k not in ("weights", "arch")})
            if on_epoch is not None:
                def state(epoch: int = epoch, arch: dict[str, Any] = arch) -> dict[str, Any]:
                    return {"model": net.state_dict(), "controller": controller.state_dict(),
                            "w_opt": w_opt.state_dict(), "c_opt": controller.optimizer.state_dict(),
                            "sched": sched.state_dict(), "generator": generator.get_state(),
                            "c_generator": controller.generator.get_state(), "rng": rng_state(),
                            "history": history, "epoch": epoch, "arch": arch}
                on_epoch(record, state)
            if progress is not None:
                progress(epoch, self.epochs)
        if not arch:  # resumed after the last epoch: derive from the restored state
            arch = self.derive(net, controller, held, task, signal)
        return arch, {"history": history, "stopped": "", "epochs_run": len(history)}

    def _train_shared(self, net: SharedSupernet, controller: Controller, w_opt: torch.optim.Optimizer, split: Any,
                      generator: torch.Generator, task: Any = None) -> dict[str, float]:
        """One pass over `split`, each minibatch on the path of a freshly sampled architecture, on the task's
        loss; returns the pass's accuracy (not for a regression) and mean loss."""
        net.train()
        loss_fn, kind = search_loss(task), kind_of(task)
        seen, correct, positions, loss_sum = 0, 0, 0, 0.0
        for x, y in split.batches(self.batch_size, shuffle=True, generator=generator, drop_last=True):
            net.select(controller.sample(1)[0])
            w_opt.zero_grad(set_to_none=True)
            logits = net(x)
            loss = loss_fn(logits, y)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            w_opt.step()
            seen += len(y)
            hit, counted = hits(logits, y, kind)
            correct, positions = correct + hit, positions + counted
            loss_sum += float(loss.detach()) * len(y)
        acc = {"acc": correct / max(positions, 1)} if kind != "regress" else {}
        return {**acc, "loss": loss_sum / max(seen, 1)}

    def derive(self, net: SharedSupernet, controller: Controller, held: Sequence[tuple[torch.Tensor, torch.Tensor]],
               task: Any = None, signal: Signal = DEFAULT_SIGNAL) -> dict[str, Any]:
        """The best of `derive_samples` sampled architectures by reward on `held` (first of equals)."""
        candidates = {arch_key(a): a for a in controller.sample(self.derive_samples)}
        scored = [(score(_scored(net, a, held, task), task, signal), -i, a) for i, a in enumerate(candidates.values())]
        return dict(max(scored, key=lambda s: (s[0], s[1]))[2])


@torch.no_grad()
def controller_entropy(controller: Controller, n: int = 16) -> float:
    """The controller's mean per-decision entropy (nats) over `n` sampled paths."""
    paths = [controller.walk() for _ in range(n)]
    return sum(float(p.entropy) / max(p.steps, 1) for p in paths) / n
