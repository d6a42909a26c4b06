"""Plotly figures of a NAS study's objectives that Optuna does not draw; Optuna's own plots are used where
they exist: the Pareto front (pairs, over time, hypervolume), histories and importances, convergence and the
strategies compared. The figures of the architectures and their training are in `_plot_archs`.

Each function takes the study and returns a `plotly.graph_objects.Figure`, or None when the study
holds nothing to draw. Trials are read as stored: the objectives by metric name (an infeasible trial,
pruned before training, still has its cheap metrics as user attrs), the decisions in `params`, and the
strategy that proposed each trial (`strategy`: the sampler's class, or a gradient method's label).
The readers of trials (`metric_names`, `strategy_of`, `feasible`, `main_objective`, `dominated`, `hover`)
and the figures' `LAYOUT` are shared with `_plot_archs`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

__all__ = ["metric_names", "strategy_of", "feasible", "main_objective", "dominated", "hover", "LAYOUT",
           "pareto_pairs", "pareto_front", "history_by_strategy", "importances", "pareto_evolution",
           "hypervolume_history", "convergence", "strategy_box"]

LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=30, t=50, b=50))


# -- reading trials -------------------------------------------------------------------------------
def metric_names(study: optuna.Study) -> list[str]:
    return list(study.metric_names or [f"value{i}" for i in range(len(study.directions))])


def strategy_of(t: FrozenTrial) -> str:
    s = t.user_attrs.get("strategy")
    return str(s.get("label", s.get("method", "gradient")) if isinstance(s, dict) else s or "unknown")


def feasible(t: FrozenTrial) -> bool:
    values = list(t.constraints.values()) if hasattr(t, "constraints") else []
    return all(v <= 0 for v in values)


def main_objective(study: optuna.Study) -> int:
    """The index of `accuracy` among the objectives, else 0."""
    names = metric_names(study)
    return names.index("accuracy") if "accuracy" in names else 0


def _value(t: FrozenTrial, names: Sequence[str], i: int) -> float | None:
    if t.values is not None:
        return float(t.values[i])
    v = t.user_attrs.get(names[i])
    return float(v) if isinstance(v, (int, float)) else None


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def dominated(points: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """For each row of `points`: is another row at least as good everywhere and better somewhere?"""
    p = points * signs  # larger is better in every column
    ge = (p[None, :, :] >= p[:, None, :]).all(-1)
    gt = (p[None, :, :] > p[:, None, :]).any(-1)
    return (ge & gt).any(1)


def _signs(study: optuna.Study) -> np.ndarray:
    return np.array([1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions])


def hover(t: FrozenTrial) -> str:
    return f"trial {t.number} ({strategy_of(t)})<br>{t.user_attrs.get('arch', '')}"


# -- Pareto front ---------------------------------------------------------------------------------
def pareto_pairs(study: optuna.Study) -> go.Figure | None:
    """Every pair of objectives: Pareto-optimal, dominated and infeasible trials (the last where both
    metrics were measured before the constraint rejected them)."""
    names = metric_names(study)
    if len(names) < 2:
        return None
    complete = [t for t in _complete(study) if feasible(t)]
    infeasible = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not feasible(t)]
    behind = (dominated(np.array([t.values for t in complete]), _signs(study)) if complete
                 else np.zeros(0, bool))
    pairs = list(itertools.combinations(range(len(names)), 2))
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.09, vertical_spacing=0.16)
    groups = [("Pareto-optimal", [t for t, d in zip(complete, behind, strict=True) if not d], "#d62728", "circle"),
              ("dominated", [t for t, d in zip(complete, behind, strict=True) if d], "#1f77b4", "circle"),
              ("infeasible", infeasible, "#9a9a9a", "x")]
    for k, (i, j) in enumerate(pairs):
        row, col = k // cols + 1, k % cols + 1
        for label, trials, colour, symbol in groups:
            pts = [(x, y, t) for t in trials if (x := _value(t, names, i)) is not None
                   and (y := _value(t, names, j)) is not None]
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name=label,
                                     legendgroup=label, showlegend=k == 0,
                                     marker=dict(color=colour, symbol=symbol, size=8, opacity=0.85),
                                     text=[hover(p[2]) for p in pts], hovertemplate="%{text}<extra></extra>"),
                          row=row, col=col)
        fig.update_xaxes(title_text=names[i], row=row, col=col)
        fig.update_yaxes(title_text=names[j], row=row, col=col)
    fig.update_layout(**LAYOUT, height=340 * rows, title="Pareto front, objective pairs")
    return fig


def pareto_front(study: optuna.Study) -> go.Figure | None:
    """Optuna's Pareto-front plot (2-D, or 3-D for three objectives), infeasible trials marked."""
    names = metric_names(study)
    if len(names) not in (2, 3) or not _complete(study):
        return None
    has_constraints = any(t.constraints for t in study.get_trials(deepcopy=False))
    fig = optuna.visualization.plot_pareto_front(
        study, target_names=names, constraints_func=(lambda t: list(t.constraints.values()) or [0.0])
        if has_constraints else None)
    fig.update_layout(template="plotly_white", height=520)
    return fig


def pareto_evolution(study: optuna.Study, snapshots: int = 4) -> go.Figure | None:
    """The front of the first two objectives after 1/k, 2/k, ..., all of the trials (by trial number)."""
    names = metric_names(study)
    complete = sorted((t for t in _complete(study) if feasible(t)), key=lambda t: t.number)
    if len(names) < 2 or not complete:
        return None
    last = max(t.number for t in study.get_trials(deepcopy=False))
    signs = _signs(study)[:2]
    fig = go.Figure()
    cuts = sorted({max(1, round((last + 1) * (s + 1) / snapshots)) for s in range(snapshots)})
    for k, cut in enumerate(cuts):
        seen = [t for t in complete if t.number < cut]
        if not seen:
            continue
        pts = np.array([t.values[:2] for t in seen])
        front = [t for t, d in zip(seen, dominated(pts, signs), strict=True) if not d]
        front.sort(key=lambda t: t.values[0])
        shade = 0.25 + 0.75 * (k + 1) / len(cuts)
        fig.add_trace(go.Scatter(x=[t.values[0] for t in front], y=[t.values[1] for t in front],
                                 mode="lines+markers", line_shape="hv", name=f"after {cut} trials",
                                 marker=dict(size=8), opacity=shade, text=[hover(t) for t in front],
                                 hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(**LAYOUT, title="Pareto front over time", xaxis_title=names[0], yaxis_title=names[1],
                      height=420)
    return fig


def hypervolume_history(study: optuna.Study) -> go.Figure | None:
    """Optuna's hypervolume history, the reference point just beyond the worst value seen per objective."""
    complete = [t for t in _complete(study) if feasible(t)]
    if len(study.directions) < 2 or len(complete) < 2:
        return None
    values, signs = np.array([t.values for t in complete]), _signs(study)
    worst = np.where(signs > 0, values.min(0), values.max(0))
    span = values.max(0) - values.min(0)
    reference = worst - signs * np.maximum(0.1 * span, 1e-9)
    fig = optuna.visualization.plot_hypervolume_history(study, reference_point=reference.tolist())
    fig.update_layout(template="plotly_white", height=380)
    return fig


# -- histories, importances -----------------------------------------------------------------------
def _by_strategy(study: optuna.Study, index: int) -> list[optuna.Study]:
    """One in-memory single-objective study per strategy, holding its finished trials' `index` value."""
    groups: dict[str, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        groups.setdefault(strategy_of(t), []).append(t)
    studies = []
    for label, trials in groups.items():
        sub = optuna.create_study(study_name=label, direction=study.directions[index])
        sub.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                  value=t.values[index], user_attrs={"number": t.number})
                        for t in trials])
        studies.append(sub)
    return studies


def history_by_strategy(study: optuna.Study) -> go.Figure | None:
    """Optuna's optimisation history of the main objective, one line per strategy (its own trial count)."""
    index = main_objective(study)
    studies = _by_strategy(study, index)
    if not studies:
        return None
    name = metric_names(study)[index]
    fig = optuna.visualization.plot_optimization_history(studies, target_name=name)
    fig.update_layout(template="plotly_white", height=420,
                      title=f"Optimisation history of {name} per strategy (x: the strategy's n-th trial)")
    return fig


def _objective(i: int) -> Any:
    return lambda t: t.values[i]


def importances(study: optuna.Study) -> list[go.Figure]:
    """Optuna's parameter importances (fANOVA), one figure per objective; none below 3 trials."""
    complete = _complete(study)
    if len(complete) < 3:
        return []
    figs = []
    for i, name in enumerate(metric_names(study)):
        try:
            fig = optuna.visualization.plot_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=_objective(i), target_name=name)
        except Exception:  # e.g. every trial has the same value, or too few shared decisions
            continue
        fig.update_layout(template="plotly_white", title=f"Decision importances for {name}", height=380)
        figs.append(fig)
    return figs


# -- convergence, strategies ----------------------------------------------------------------------
def convergence(study: optuna.Study, cost: Any) -> go.Figure | None:
    """Best-so-far of the main objective against the compute spent (hours), one line per strategy.
    `cost(trial)` gives a trial's compute hours."""
    index, names = main_objective(study), metric_names(study)
    sign = _signs(study)[index]
    fig = go.Figure()
    groups: dict[str, list[FrozenTrial]] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state.is_finished():
            groups.setdefault(strategy_of(t), []).append(t)
    for label, trials in groups.items():
        spent, best, xs, ys = 0.0, None, [], []
        for t in trials:
            spent += cost(t)
            if t.values is not None and feasible(t) and (best is None or sign * t.values[index] > sign * best):
                best = t.values[index]
            if best is not None:
                xs.append(spent)
                ys.append(best)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", name=label))
    if not fig.data:
        return None
    fig.update_layout(**LAYOUT, title=f"Convergence: best {names[index]} so far against compute",
                      xaxis_title="compute hours (cumulative, per strategy)", yaxis_title=names[index], height=400)
    return fig


def strategy_box(study: optuna.Study) -> go.Figure | None:
    """The main objective of every finished trial per strategy, when the study holds several."""
    index, names = main_objective(study), metric_names(study)
    groups: dict[str, list[float]] = {}
    for t in _complete(study):
        groups.setdefault(strategy_of(t), []).append(t.values[index])
    if len(groups) < 2:
        return None
    fig = go.Figure([go.Box(y=v, name=k, boxpoints="all", jitter=0.4) for k, v in groups.items()])
    fig.update_layout(**LAYOUT, title=f"{names[index]} per strategy", yaxis_title=names[index], height=400,
                      showlegend=False)
    return fig
