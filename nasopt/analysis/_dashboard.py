"""What optuna-dashboard reads: the storage seen through a view that makes feasibility visible.

optuna-dashboard 0.21 takes a trial's constraints only from the old list-form `constraints` system
attr, while Optuna 5's `trial.set_constraint(key, value)` stores `constraints:<key>`; served as they
are, every trial would look feasible. `FeasibilityView` wraps a storage and, in the trials it returns
(and only there, nothing is written), adds the list form of each trial's constraints, so the
dashboard greys infeasible trials in its Pareto-front, history and timeline plots, and the user attr
`feasible` ("yes", or "no: params=61,234 > 50,000", every value by the rule of `nasopt._format`) to every constrained trial for the trial pages
and the trial table. Everything else passes straight through to the wrapped storage.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from nasopt._format import fmt
from nasopt.artifacts._inherit import artifact_dir
from nasopt.measure._int8 import AT_LEAST  # limits that are minimums (int8_accuracy)

__all__ = ["FeasibilityView", "artifact_folder"]

_PREFIX = "constraints:"


def _constraints(trial: FrozenTrial) -> dict[str, float]:
    system = getattr(trial, "_system_attrs", None) or {}
    return {k[len(_PREFIX):]: float(v) for k, v in system.items() if k.startswith(_PREFIX)}


def _limits(storage: BaseStorage, study_id: int) -> dict[str, float]:
    info = storage.get_study_user_attrs(study_id).get("nasopt") or {}
    return {str(k): float(v) for k, v in (info.get("constraints") or {}).items()}


def _with_list_form(trial: FrozenTrial, limits: dict[str, float]) -> FrozenTrial:
    named = _constraints(trial)
    if not named or "constraints" in trial._system_attrs:
        return trial
    view = copy.copy(trial)
    view._system_attrs = {**trial._system_attrs, "constraints": list(named.values())}
    broken = [k for k, v in named.items() if v > 0]
    if broken:
        detail = ", ".join((f"{k}={fmt(limits[k] - v, k)} < {fmt(limits[k], k)}" if k in limits else
                            f"{k} under by {fmt(v, k)}")
                           if k in AT_LEAST else  # a minimum (int8_accuracy): the constraint is limit - value
                           f"{k}={fmt(v + limits[k], k)} > {fmt(limits[k], k)}" if k in limits else
                           f"{k} over by {fmt(v, k)}"
                           for k, v in ((k, named[k]) for k in broken))
        feasible = f"no: {detail}"
    else:
        feasible = "yes"
    view._user_attrs = {"feasible": feasible, **trial.user_attrs}  # first: the trial page lists attrs in order
    return view


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: FeasibilityView, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


class _Delegating(BaseStorage):
    """Every public storage method forwards to `self._inner`."""

    _inner: BaseStorage

    def __getattr__(self, name: str) -> Any:  # attributes of the concrete storage (url, engine, ...)
        if "_inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["_inner"], name)


for _name, _value in list(vars(BaseStorage).items()):
    if callable(_value) and not _name.startswith("_"):
        setattr(_Delegating, _name, _delegate(_name))
_Delegating.__abstractmethods__ = frozenset()


class FeasibilityView(_Delegating):
    """`storage` as optuna-dashboard should see it (see the module doc); read-through, never written."""

    def __init__(self, storage: BaseStorage) -> None:
        self._inner = storage

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        limits = _limits(self._inner, study_id)
        trials = self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [_with_list_form(t, limits) for t in trials]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        # one trial has no study id at hand: its `feasible` attr names the excess instead of the limit
        return _with_list_form(self._inner.get_trial(trial_id), {})


def artifact_folder(storage_url: str | None, directory: str | None = None) -> FileSystemArtifactStore | None:
    """The study's artifact store if its folder exists (`artifact_dir`: the runner's rule, journal files
    included), None otherwise: a viewer never creates it."""
    directory = artifact_dir(storage_url, directory)
    return FileSystemArtifactStore(directory) if os.path.isdir(directory) else None
