"""What optuna-dashboard reads: the storage seen through a view that makes feasibility visible.

optuna-dashboard 0.21 takes a trial's constraints only from the old list-form `constraints` system
attr, while Optuna 5's `trial.set_constraint(key, value)` stores `constraints:<key>`; served as they
are, every trial would look feasible. `FeasibilityView` wraps a storage and, in the trials it returns
(and only there, nothing is written), adds the list form of each trial's constraints, so the
dashboard greys infeasible trials in its Pareto-front, history and timeline plots, and the user attr
`feasible` ("yes", or "no: params=61,234 > 50,000", every value by the rule of `nasopt._format`) to every constrained trial for the trial pages
and the trial table. Everything else passes straight through to the wrapped storage.

The view also lays out the user attrs for the trial page, which prints each as one `key value` line that
never wraps: one long JSON value (a gradient run's `alphas`, a trial's per-epoch `curve`, the `latency`
record) made the page thousands of pixels wide. In the view, and only there, a value longer than a line
(`WIDTH` characters) is folded: a record into one line per field (`latency.median_ms`, `latency.device`,
...), per-epoch records into a line that counts them and gives the last (`curve`: "8 epochs; epoch 8:
train_loss 0.41, ..."), the architecture weights into one line per decision with its candidates by name,
largest first (`alphas.pos0.op`: "conv3x3 0.41, conv5x5 0.22, ..."), anything else cut to the line.
Storage keeps the full values (what `nasopt report`, pandas and SQL read).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from typing import Any

from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from nasopt._format import fmt
from nasopt.artifacts._inherit import artifact_dir

__all__ = ["FeasibilityView", "artifact_folder", "WIDTH"]

_PREFIX = "constraints:"
WIDTH = 100  # characters of one `key value` line of a trial page: about 850 px, a laptop's trial pane


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _cut(text: str, room: int) -> str:
    return text if len(text) <= room else text[: max(room - 1, 1)] + "\u2026"


def _epochs(records: list[Any]) -> str:
    return f"{len(records)} epoch{'' if len(records) == 1 else 's'}"


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _alphas(key: str, records: list[Any], names: dict[str, list[str]]) -> list[tuple[str, Any]]:
    """One line per decision: its candidates by name with the last epoch's weights, largest first."""
    last = records[-1]
    lines: list[tuple[str, Any]] = [(key, f"{_epochs(records)}; the weights of epoch {last.get('epoch')} below "
                                          f"({key}.<decision>), largest first")]
    for decision, weights in (last.get("weights") or {}).items():
        line = f"{key}.{decision}"
        if not _numbers(weights):
            lines.append((line, _cut(_text(weights), WIDTH - len(line) - 1)))
            continue
        ops = names.get(decision) or []
        ops = ops if len(ops) == len(weights) else [f"#{i}" for i in range(len(weights))]
        ranked = sorted(zip(weights, ops, strict=True), key=lambda p: -p[0])
        lines.append((line, _cut(", ".join(f"{op} {w:.2f}" for w, op in ranked), WIDTH - len(line) - 1)))
    return lines


def _fold(key: str, value: Any, names: dict[str, list[str]]) -> list[tuple[str, Any]]:
    """`key: value` as lines of at most WIDTH characters (see the module doc)."""
    room = WIDTH - len(key) - 1
    if len(_text(value)) <= room:
        return [(key, value)]
    if isinstance(value, dict) and value:
        return [line for k, v in value.items() for line in _fold(f"{key}.{k}", v, names)]
    if isinstance(value, list) and value and all(isinstance(r, dict) and "epoch" in r for r in value):
        if all(isinstance(r.get("weights"), dict) for r in value):  # a gradient run's alphas
            return _alphas(key, value, names)
        last = value[-1]
        fields = ", ".join(f"{k} {fmt(v, k)}" for k, v in last.items() if k != "epoch")
        return [(key, _cut(f"{_epochs(value)}; epoch {last['epoch']}: {fields}", room))]
    return [(key, _cut(_text(value), room))]


def _choices(trials: list[FrozenTrial]) -> dict[str, list[str]]:
    """The candidates of every categorical decision, by name, from the trials' distributions."""
    names: dict[str, list[str]] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if name not in names and hasattr(dist, "choices"):
                names[name] = [str(c) for c in dist.choices]
    return names


def _constraints(trial: FrozenTrial) -> dict[str, float]:
    system = getattr(trial, "_system_attrs", None) or {}
    return {k[len(_PREFIX):]: float(v) for k, v in system.items() if k.startswith(_PREFIX)}


def _limits(storage: BaseStorage, study_id: int) -> dict[str, float]:
    info = storage.get_study_user_attrs(study_id).get("nasopt") or {}
    return {str(k): float(v) for k, v in (info.get("constraints") or {}).items()}


def _for_display(trial: FrozenTrial, limits: dict[str, float], names: dict[str, list[str]]) -> FrozenTrial:
    """The trial with its constraints' list form and `feasible`, and its user attrs folded to the page."""
    view = _with_list_form(trial, limits)
    attrs = view.user_attrs
    if all(len(k) + 1 + len(_text(v)) <= WIDTH for k, v in attrs.items()):
        return view
    view = copy.copy(view) if view is trial else view
    view._user_attrs = dict(line for k, v in attrs.items() for line in _fold(k, v, names))
    return view


def _with_list_form(trial: FrozenTrial, limits: dict[str, float]) -> FrozenTrial:
    named = _constraints(trial)
    if not named or "constraints" in trial._system_attrs:
        return trial
    view = copy.copy(trial)
    view._system_attrs = {**trial._system_attrs, "constraints": list(named.values())}
    broken = [k for k, v in named.items() if v > 0]
    if broken:
        from nasopt.measure._int8 import AT_LEAST  # limits that are minimums (int8_accuracy); imports torch

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
        # a running gradient trial has no params yet: its alphas take the op names from the sampled trials
        names = _choices(trials) if any("alphas" in t.user_attrs for t in trials) else {}
        return [_for_display(t, limits, names) for t in trials]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        # one trial has no study id at hand: its `feasible` attr names the excess instead of the limit
        trial = self._inner.get_trial(trial_id)
        return _for_display(trial, {}, _choices([trial]))


def artifact_folder(storage_url: str | None, directory: str | None = None) -> FileSystemArtifactStore | None:
    """The study's artifact store if its folder exists (`artifact_dir`: the runner's rule, journal files
    included), None otherwise: a viewer never creates it."""
    directory = artifact_dir(storage_url, directory)
    return FileSystemArtifactStore(directory) if os.path.isdir(directory) else None
