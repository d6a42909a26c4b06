"""What the samplers that decide a trial's whole architecture at once (REA, PNAS, RL) share.

The architecture is decided when the trial asks its first parameter (`decide`), stored in the trial's
system attrs under the sampler's `attr_key`, kept in memory per trial id and, in any other process that
continues the trial, read back from storage. Every `suggest` is answered from the architecture when it
has the name and the value lies in the asked distribution, otherwise at random (a RandomSampler). Optuna's
relative sampling is unused: everything goes through `sample_independent`.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

__all__ = ["ArchSampler", "MISSING", "fit_value"]

MISSING: Any = object()
_MAX_CACHED = 256  # decisions kept in memory: trials that never reach after_trial must not pile up


def fit_value(dist: BaseDistribution, value: Any) -> Any:
    """`value` in the type of `dist` if `dist` contains it, else `MISSING`."""
    try:
        internal = dist.to_internal_repr(value)
        return dist.to_external_repr(internal) if dist._contains(internal) else MISSING
    except (ValueError, TypeError):
        return MISSING


class ArchSampler(BaseSampler):
    """A sampler that decides each trial's architecture at its first parameter (module docstring).

    Subclasses set `attr_key`, implement `decide` and, when the stored decision is more than the
    architecture, `arch_of`. `decide` runs under the sampler's (reentrant) lock, `_lock`, so parallel
    workers (n_jobs > 1) decide one at a time.

    Args:
        fallback_seed: seed of the RandomSampler that answers what the architecture does not.
    """

    attr_key: ClassVar[str]  # the trial system attr that holds the decision

    def __init__(self, *, fallback_seed: int | None) -> None:
        self._random = RandomSampler(seed=fallback_seed)
        self._lock = threading.RLock()
        self._decided: dict[int, tuple[Any, Any]] = {}  # trial id -> (storage, decision): saves storage reads

    @abc.abstractmethod
    def decide(self, study: Study, trial: FrozenTrial) -> tuple[Any, dict[str, Any]]:
        """A new trial's decision (stored under `attr_key`) and other system attrs to store beside it."""

    def arch_of(self, decision: Any) -> Mapping[str, Any]:
        """The architecture (name -> value) in a stored decision."""
        return decision  # type: ignore[no-any-return]

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    # -- the sampler protocol: everything goes through sample_independent -------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        arch = self.arch_of(self._decision(study, trial))
        value = fit_value(param_distribution, arch[param_name]) if param_name in arch else MISSING
        if value is MISSING:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        return value

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._random.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        with self._lock:
            self._decided.pop(trial._trial_id, None)
        self._random.after_trial(study, trial, state, values)

    # -- one decision per trial ------------------------------------------------------------------
    def _decision(self, study: Study, trial: FrozenTrial) -> Any:
        """The trial's decision: from memory, else from storage, else decided now and stored."""
        with self._lock:
            storage, decision = self._decided.get(trial._trial_id, (None, None))
            if storage is study._storage and decision is not None:
                return decision
            decision = trial.system_attrs.get(self.attr_key)
            if decision is None:  # the frozen trial may predate the decision: ask the storage itself
                decision = study._storage.get_trial_system_attrs(trial._trial_id).get(self.attr_key)
            if decision is None:
                decision, others = self.decide(study, trial)
                study._storage.set_trial_system_attr(trial._trial_id, self.attr_key, decision)
                for key, value in others.items():
                    study._storage.set_trial_system_attr(trial._trial_id, key, value)
            if len(self._decided) >= _MAX_CACHED:
                self._decided.pop(next(iter(self._decided)))
            self._decided[trial._trial_id] = (study._storage, decision)
            return decision
