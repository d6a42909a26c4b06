"""RL search (Zoph & Le 2017, NASNet): the LSTM controller of `nasopt.oneshot.controller` as an Optuna sampler.

Each trial's architecture is sampled from the controller when the trial asks its first parameter and
stored in the trial's system attrs (`rl:arch`), so any process answers the rest of the trial alike; a
name the architecture lacks, or a value outside the asked distribution, is drawn at random. With a
`space` the controller walks the space's own `suggest` (conditional decisions stay consistent); without
one it decides every parameter the study's finished trials have shown so far (the last distribution seen
per name, integers and floats discretised to `bins` values), and the first trials are random.

Learning: the controller is a function of the finished trials. Before it samples, it takes the finished
trials it has not learned from yet, in trial-number order, and makes one REINFORCE update (moving-average
baseline, entropy bonus) per `batch_size` of them; a new process replays the study the same way (to the
same controller when the trials finished in number order, as in a sequential run). A trial's reward lies
in [0, 1], min-max normalised over the COMPLETE trials numbered up to the last one of its update batch:

- one objective: the value, 1 for the best so far (maximised or minimised as the study says);
- several: an augmented random-weight Chebyshev scalarisation (ParEGO): with weights w ~ Dirichlet(1)
  drawn per trial (seeded by the trial number) and z_k the normalised objective k (1 = best),
  reward = 1 - max_k w_k (1 - z_k) - 0.05 sum_k w_k (1 - z_k), so each trial pulls towards one random
  direction of the Pareto front;
- a PRUNED trial, or one whose `trial.set_constraint` values are > 0 (nasopt prunes architectures
  that break a hard limit before training), gets 0: the controller learns to avoid it. FAILed trials
  teach nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nasopt.errors import UserError
from nasopt.samplers._base import ArchSampler

__all__ = ["RLSampler"]

ARCH_KEY = "rl:arch"  # system attr: the architecture the controller sampled for the trial


class RLSampler(ArchSampler):
    """A REINFORCE-trained LSTM controller proposing whole architectures, single- or multi-objective.

    Args:
        space: the study's search space (recommended: the controller then follows its `suggest`), or
            None for any objective.
        seed: seed of the controller's weights, its sampling and the random fallback.
        batch_size: finished trials per REINFORCE update.
        hidden, lr, entropy_weight, baseline_decay, bins, tanh_constant, temperature: the controller's
            settings (`nasopt.oneshot.controller.Controller`).
    """

    attr_key = ARCH_KEY

    def __init__(self, space: Any = None, *, seed: int | None = None, batch_size: int = 2, hidden: int = 64,
                 lr: float = 5e-3, entropy_weight: float = 1e-3, baseline_decay: float = 0.8, bins: int = 10,
                 tanh_constant: float | None = 2.5, temperature: float = 1.0) -> None:
        if batch_size < 1:
            raise UserError(f"`batch_size >= 1` must hold, but got {batch_size=}")
        if space is not None and not (callable(getattr(space, "suggest", None))
                                      and callable(getattr(space, "distributions", None))):
            raise UserError(f"RLSampler(space=...) needs a search space (suggest + distributions), but got {space!r}")
        self.space, self.batch_size = space, batch_size
        self._settings: dict[str, Any] = {"hidden": hidden, "lr": lr, "entropy_weight": entropy_weight,
                          "baseline_decay": baseline_decay, "bins": bins, "tanh_constant": tanh_constant,
                          "temperature": temperature}
        super().__init__(fallback_seed=seed)
        self._seed = int(np.random.SeedSequence(seed).generate_state(1)[0] >> 1)
        self._controller: Any = None
        self._decisions: tuple[tuple[str, str], ...] | None = None  # what the controller was built for
        self._learned: set[int] = set()
        from nasopt.oneshot.controller import Controller  # on use: the one-shot package is heavier to import

        Controller({"check": CategoricalDistribution((0, 1))}, **self._settings)  # bad settings fail here

    def reseed_rng(self) -> None:
        self._seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        super().reseed_rng()
        if self._controller is not None:
            self._controller.generator.manual_seed(self._seed)

    # -- one architecture per trial --------------------------------------------------------------
    def decide(self, study: Study, trial: FrozenTrial) -> tuple[dict[str, Any], dict[str, Any]]:
        """A sample of the controller, after it learned from the finished trials (stored under `rl:arch`)."""
        controller = self.learn(study)
        return (controller.sample(1)[0] if controller is not None else {}), {}

    def learn(self, study: Study) -> Any:
        """Update the controller on the finished trials it has not learned from; returns it (None while a
        space-less sampler has seen no finished trial)."""
        from nasopt.oneshot.controller import Controller

        with self._lock:
            finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            finished.sort(key=lambda t: t.number)
            if self.space is not None:
                if self._controller is None:
                    self._controller = Controller(self.space, seed=self._seed, **self._settings)
            else:
                dists: dict[str, BaseDistribution] = {}
                for t in finished:
                    dists.update(t.distributions)
                key = tuple((name, repr(d)) for name, d in dists.items())
                if not dists:
                    return None
                if key != self._decisions:  # new names or ranges: a new controller relearns every trial
                    self._controller = Controller(dists, seed=self._seed, **self._settings)
                    self._decisions, self._learned = key, set()
            pending = [t for t in finished if t.number not in self._learned]
            usable = len(pending) - len(pending) % self.batch_size
            for i in range(0, usable, self.batch_size):
                batch = pending[i:i + self.batch_size]
                # normalised over the trials up to the batch's last: what a sequential run saw at the time
                rewards = _rewards([t for t in finished if t.number <= batch[-1].number], study.directions,
                                   self._seed)
                archs, values = [], []
                for t in batch:
                    self._learned.add(t.number)
                    arch = self._scored(t)
                    if arch is not None:
                        archs.append(arch)
                        values.append(rewards[t.number])
                if archs:
                    self._controller.update(archs, values)
            return self._controller

    def _scored(self, trial: FrozenTrial) -> dict[str, Any] | None:
        """The architecture to score for a finished trial: its params (with, space-less, the rest of the
        sampled architecture); None when the controller cannot score it (params of another space)."""
        if self.space is None:
            return {**dict(trial.system_attrs.get(ARCH_KEY) or {}), **trial.params}
        import torch

        try:
            with torch.no_grad():  # walks the space's suggest: does the trial have every decision it asks?
                self._controller.log_prob(trial.params)
        except UserError:
            return None
        return dict(trial.params)


def _rewards(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection], seed: int) -> dict[int, float]:
    """Reward in [0, 1] per trial number (module docstring)."""
    sign = np.array([1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in directions])
    good = [t for t in trials if t.state == TrialState.COMPLETE and not _infeasible(t) and t.values is not None]
    out = {t.number: 0.0 for t in trials}
    if not good:
        return out
    values = np.array([t.values for t in good], dtype=float) * sign  # (n, k), larger is better
    finite = np.where(np.isfinite(values), values, np.nan)
    low, high = np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)
    low, high = np.nan_to_num(low), np.nan_to_num(high)
    span = np.where(high > low, high - low, 1.0)
    z = np.clip(np.nan_to_num((values - low) / span, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    z = np.where(high > low, z, 0.5)  # an objective every trial ties on says nothing
    for t, row in zip(good, z, strict=True):
        if len(row) == 1:
            out[t.number] = float(row[0])
        else:
            w = np.random.default_rng((seed, t.number)).dirichlet(np.ones(len(row)))
            gap = w * (1.0 - row)
            out[t.number] = float(1.0 - gap.max() - 0.05 * gap.sum())
    return out


def _infeasible(trial: FrozenTrial) -> bool:
    return any(v > 0 for v in (getattr(trial, "constraints", None) or {}).values())

