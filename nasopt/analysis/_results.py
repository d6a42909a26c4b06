"""Trials as a pandas frame and the Pareto set, read straight from the storage.

Unlike Optuna's `trials_dataframe()`, the frame has one column per objective under its metric name,
one per architecture decision (the choice itself, not an index into the choices), and the hardware
metrics, timings and the compact architecture string as plain columns.
"""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from nasopt.errors import UserError
from nasopt.storage import mask_url, open_storage

__all__ = ["load_study", "trials_frame", "pareto_front", "study_names"]

_METRIC_ATTRS = ("params", "macs", "latency_ms", "memory_mb", "energy_mj")
# the zero-cost proxies (nasopt.measure.PROXIES, named here so that reading a study needs no torch)
PROXY_COLUMNS = ("naswot", "synflow", "snip", "grad_norm", "jacob_cov")


def study_names(storage: str | None = None) -> list[str]:
    """Names of the studies in `storage` (default `sqlite:///nasopt.db`)."""
    rdb = open_storage(storage, create=False, heartbeat=False)
    return [s.study_name for s in optuna.get_all_study_summaries(rdb, include_best_trial=False)]


def load_study(study_name: str, storage: str | None = None) -> optuna.Study:
    """Load a study by name, or raise `UserError` listing the studies that exist."""
    rdb = open_storage(storage, create=False, heartbeat=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(rdb, include_best_trial=False)]
    if study_name not in names:
        known = ", ".join(names) or "none"
        raise UserError(f"no study {study_name!r} in {mask_url(rdb.url)}; studies there: {known}")
    return optuna.load_study(study_name=study_name, storage=rdb)


def _feasible(t: FrozenTrial) -> bool | None:
    values = [v for k, v in t.system_attrs.items() if k.startswith("constraints:")]
    values += list(t.system_attrs.get("constraints", []) or [])
    return all(v <= 0 for v in values) if values else None


def _row(t: FrozenTrial, metric_names: list[str], extra: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"number": t.number, "state": t.state.name}
    for i, name in enumerate(metric_names):
        row[name] = t.values[i] if t.values is not None else t.user_attrs.get(name)
    for name in (*_METRIC_ATTRS, *extra):
        row.setdefault(name, t.user_attrs.get(name))
    row["feasible"] = _feasible(t)
    row["arch"] = t.user_attrs.get("arch")
    strategy = t.user_attrs.get("strategy")  # the sampler's class, or a gradient method's config
    row["strategy"] = strategy.get("label") if isinstance(strategy, dict) else strategy
    row["duration_s"] = t.duration.total_seconds() if t.duration is not None else None
    row["epochs"] = len(t.user_attrs.get("curve", []))
    row["reused_from"] = t.user_attrs.get("reused_from")
    row["reason"] = t.user_attrs.get("pruned_reason") or t.user_attrs.get("fail_reason")
    # study settings this trial ran under on purpose (--allow-changed), e.g. "train.epochs=20"; "" = the study's
    row["settings"] = ", ".join(f"{k}={v}" for k, v in (t.user_attrs.get("settings") or {}).items())
    row.update(t.params)
    return row


def trials_frame(storage: str | None = None, study_name: str | None = None, *,
                 study: optuna.Study | None = None) -> pd.DataFrame:
    """One row per trial: number, state, objectives by metric name, decisions, metrics, arch string."""
    if study is None:
        if study_name is None:
            raise UserError("trials_frame needs a `study_name` (see `nasopt ls`) or a `study`")
        study = load_study(study_name, storage)
    names = study.metric_names or [f"value{i}" for i in range(len(study.directions))]
    # the study's own metrics, and its loss and accuracy where its task has them (a regression has no accuracy)
    info = study.user_attrs.get("nasopt") or {}
    extra = [*((info.get("definition") or {}).get("metrics") or {}), "val_loss"]
    if info.get("kind") != "regress":
        extra.insert(0, "accuracy")
    trials = study.get_trials(deepcopy=False)
    if any("int8" in t.user_attrs for t in trials):  # the int8 model's figures (nasopt.measure._int8)
        extra += ["int8_accuracy", "int8_latency_ms", "int8_kb"]
    extra += [m for m in PROXY_COLUMNS if any(m in t.user_attrs for t in trials)]  # the proxies trials scored
    rows = [_row(t, names, extra) for t in trials]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["number", "state", *names, *_METRIC_ATTRS, "arch"])
    return frame.set_index("number", drop=False).rename_axis(None)


def pareto_front(storage: str | None = None, study_name: str | None = None, *,
                 study: optuna.Study | None = None) -> pd.DataFrame:
    """The Pareto-optimal feasible COMPLETE trials (the best trial for one objective), as a frame."""
    if study is None:
        if study_name is None:
            raise UserError("pareto_front needs a `study_name` (see `nasopt ls`) or a `study`")
        study = load_study(study_name, storage)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return trials_frame(study=study).iloc[0:0]
    best = {t.number for t in study.best_trials} if len(study.directions) > 1 else {study.best_trial.number}
    frame = trials_frame(study=study)
    return frame[frame["number"].isin(best)].sort_values(frame.columns[2], ascending=False)
