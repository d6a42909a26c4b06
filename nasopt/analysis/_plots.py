"""Plotly figures of a NAS study that Optuna does not draw; Optuna's own plots are used where they exist.

Each function takes the study and returns a `plotly.graph_objects.Figure`, or None when the study
holds nothing to draw (e.g. no gradient run for `alpha_evolution`). Trials are read as stored: the
objectives by metric name (an infeasible trial, pruned before training, still has its cheap metrics
as user attrs), the decisions in `params`, the per-epoch `curve`, a gradient run's `alphas`, and the
strategy that proposed each trial (`strategy`: the sampler's class, or a gradient method's label).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

__all__ = ["metric_names", "strategy_of", "feasible", "main_objective", "pareto_pairs", "pareto_front",
           "history_by_strategy", "importances", "architecture_dna", "op_frequencies", "learning_curves",
           "alpha_evolution", "pareto_evolution", "hypervolume_history", "landscape", "convergence",
           "strategy_box", "hamming"]

_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=30, t=50, b=50))


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


def _hover(t: FrozenTrial) -> str:
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
                                     text=[_hover(p[2]) for p in pts], hovertemplate="%{text}<extra></extra>"),
                          row=row, col=col)
        fig.update_xaxes(title_text=names[i], row=row, col=col)
        fig.update_yaxes(title_text=names[j], row=row, col=col)
    fig.update_layout(**_LAYOUT, height=340 * rows, title="Pareto front, objective pairs")
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
                                 marker=dict(size=8), opacity=shade, text=[_hover(t) for t in front],
                                 hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(**_LAYOUT, title="Pareto front over time", xaxis_title=names[0], yaxis_title=names[1],
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


# -- architectures --------------------------------------------------------------------------------
def _decisions(trials: Sequence[FrozenTrial]) -> list[str]:
    order: dict[str, None] = {}
    for t in trials:
        order.update(dict.fromkeys(t.params))
    return list(order)


def _scaled(t: FrozenTrial, name: str) -> float:
    if name not in t.params:
        return float("nan")
    dist = t.distributions[name]
    if isinstance(dist, CategoricalDistribution):
        return dist.choices.index(t.params[name]) / max(1, len(dist.choices) - 1)
    low, high = float(dist.low), float(dist.high)  # type: ignore[attr-defined]
    return (float(t.params[name]) - low) / (high - low or 1.0)


def _with_params(study: optuna.Study) -> list[FrozenTrial]:
    return sorted((t for t in study.get_trials(deepcopy=False) if t.params and t.state.is_finished()),
                  key=lambda t: t.number)


def architecture_dna(study: optuna.Study) -> go.Figure | None:
    """Decisions x trials: each cell the choice's position among the decision's choices (blank: absent)."""
    trials = _with_params(study)
    if not trials:
        return None
    names = _decisions(trials)
    z = [[_scaled(t, n) for t in trials] for n in names]
    text = [[str(t.params.get(n, "")) for t in trials] for n in names]
    fig = go.Figure(go.Heatmap(z=z, x=[f"#{t.number}" for t in trials], y=names, text=text, colorscale="Viridis",
                               showscale=False, xgap=1, ygap=1,
                               hovertemplate="trial %{x}<br>%{y} = %{text}<extra></extra>"))
    fig.update_layout(**_LAYOUT, title="Architecture DNA (decision x trial; colour = choice)",
                      height=max(300, 60 + 18 * len(names)), xaxis_type="category", yaxis_autorange="reversed")
    return fig


def _ops(t: FrozenTrial) -> list[str]:
    """The trial's operations: its string choices (op and layer names); in a space without any (mobile),
    its other categorical choices as `kind=value` (`kernel=5`, `expand=6`)."""
    choices = [(n, v) for n, v in t.params.items()
               if isinstance(t.distributions.get(n), CategoricalDistribution) and not isinstance(v, bool)]
    named = [v for _, v in choices if isinstance(v, str)]
    if named:
        return named
    return [f"{n.rsplit('.', 1)[-1]}={v}" for n, v in choices
            if not n.rsplit(".", 1)[-1].startswith("in")]  # input indices are wiring, not ops


def op_frequencies(study: optuna.Study, window: int | None = None) -> go.Figure | None:
    """Share of each operation among the decisions of the last `window` trials, along the trial numbers."""
    trials = _with_params(study)
    counts = [Counter(_ops(t)) for t in trials]
    ops = sorted(set().union(*counts)) if counts else []
    if not ops:
        return None
    window = window or max(3, len(trials) // 8)
    fig = go.Figure()
    for op in ops:
        share = []
        for k in range(len(trials)):
            recent = counts[max(0, k - window + 1): k + 1]
            total = sum(sum(c.values()) for c in recent)
            share.append(sum(c[op] for c in recent) / total if total else 0.0)
        fig.add_trace(go.Scatter(x=[t.number for t in trials], y=share, name=op, mode="lines", stackgroup="ops"))
    fig.update_layout(**_LAYOUT, title=f"Operation frequencies over time (last {window} trials)",
                      xaxis_title="trial", yaxis_title="share of decisions", height=420)
    return fig


def hamming(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The share of decisions (of either architecture) on which two architectures differ."""
    keys = set(a) | set(b)
    return sum(a.get(k, object()) != b.get(k, object()) for k in keys) / len(keys) if keys else 0.0


def _embed(distances: np.ndarray) -> np.ndarray:
    """Classical (Torgerson) multidimensional scaling to 2-D."""
    n = len(distances)
    centre = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * centre @ (distances**2) @ centre
    vals, vecs = np.linalg.eigh(b)
    top = np.argsort(vals)[::-1][:2]
    coords = vecs[:, top] * np.sqrt(np.maximum(vals[top], 0.0))
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))


def landscape(study: optuna.Study) -> go.Figure | None:
    """The evaluated architectures embedded in 2-D (MDS of their decision distances), coloured by the
    main objective; trials without a value (pruned, infeasible) in grey. Symbols are strategies."""
    trials = _with_params(study)
    if len(trials) < 3:
        return None
    d = np.array([[hamming(a.params, b.params) for b in trials] for a in trials])
    xy = _embed(d)
    index, names = main_objective(study), metric_names(study)
    symbols = {s: k for k, s in enumerate(dict.fromkeys(strategy_of(t) for t in trials))}
    fig = go.Figure()
    for label in symbols:
        have = [k for k, t in enumerate(trials) if strategy_of(t) == label and t.values is not None]
        rest = [k for k, t in enumerate(trials) if strategy_of(t) == label and t.values is None]
        fig.add_trace(go.Scatter(
            x=xy[have, 0], y=xy[have, 1], mode="markers", name=label,
            marker=dict(size=10, symbol=symbols[label], color=[trials[k].values[index] for k in have],
                        colorscale="Viridis", showscale=symbols[label] == 0, colorbar=dict(title=names[index]),
                        line=dict(width=0.5, color="#333")),
            text=[_hover(trials[k]) for k in have], hovertemplate="%{text}<extra></extra>"))
        if rest:
            fig.add_trace(go.Scatter(x=xy[rest, 0], y=xy[rest, 1], mode="markers", name=f"{label} (no value)",
                                     marker=dict(size=8, symbol=symbols[label], color="#c8c8c8"),
                                     text=[_hover(trials[k]) for k in rest], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(**_LAYOUT, title=f"Search landscape (2-D MDS of decision distances; colour = {names[index]})",
                      height=480, xaxis=dict(showticklabels=False, title=""), yaxis=dict(showticklabels=False, title=""),
                      legend=dict(x=1.12))
    return fig


# -- training and search --------------------------------------------------------------------------
def learning_curves(study: optuna.Study) -> go.Figure | None:
    """Validation accuracy per epoch of every trained trial, coloured by strategy, pruned ones dotted."""
    trials = [t for t in _with_params(study) if t.user_attrs.get("curve")]
    if not trials:
        return None
    colours = dict(zip(dict.fromkeys(strategy_of(t) for t in trials), itertools.cycle(
        ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"])))
    fig = go.Figure()
    shown: set[str] = set()
    for t in trials:
        curve = [r for r in t.user_attrs["curve"] if "val_acc" in r]
        label = strategy_of(t)
        fig.add_trace(go.Scatter(
            x=[r.get("epoch", k + 1) for k, r in enumerate(curve)], y=[r["val_acc"] for r in curve], mode="lines",
            name=label, legendgroup=label, showlegend=label not in shown, opacity=0.75,
            line=dict(color=colours[label], dash="dot" if t.state == TrialState.PRUNED else "solid"),
            text=[_hover(t)] * len(curve), hovertemplate="%{text}<br>epoch %{x}: %{y:.4f}<extra></extra>"))
        shown.add(label)
    fig.update_layout(**_LAYOUT, title="Learning curves (validation top-1; dotted: pruned)", xaxis_title="epoch",
                      yaxis_title="validation accuracy", height=420)
    fig.update_xaxes(dtick=1 if max(len(t.user_attrs["curve"]) for t in trials) <= 20 else None)
    return fig


def _candidates(t: FrozenTrial, name: str, n: int) -> list[str]:
    """Names of the `n` candidates of a decision's architecture weights, as far as the trial tells."""
    dist = t.distributions.get(name)
    if isinstance(dist, CategoricalDistribution) and len(dist.choices) == n:
        return [str(c) for c in dist.choices]
    head = name.rsplit(".e", 1)[0]  # a DARTS supernet edge `normal.n2.e3`: `none` + the node's ops
    dist = t.distributions.get(f"{head}.op0")
    if isinstance(dist, CategoricalDistribution) and len(dist.choices) + 1 == n:
        return ["none", *map(str, dist.choices)]
    return [f"#{k}" for k in range(n)]


def alpha_evolution(trial: FrozenTrial, max_panels: int = 32) -> go.Figure | None:
    """A gradient run's softmax architecture weights per epoch: one panel per decision (edge), one line
    per candidate op, the same colour for an op in every panel."""
    alphas = trial.user_attrs.get("alphas") or []
    if not alphas:
        return None
    names = list(alphas[-1]["weights"])[:max_panels]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, vertical_spacing=min(0.12, 0.5 / rows))
    palette = itertools.cycle(["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                               "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a", "#8ca252"])
    colours: dict[str, str] = {}
    epochs = [a["epoch"] for a in alphas]
    for k, name in enumerate(names):
        weights = np.array([a["weights"][name] for a in alphas])  # (epochs, candidates)
        for c, op in enumerate(_candidates(trial, name, weights.shape[1])):
            first = op not in colours
            colour = colours.setdefault(op, next(palette))
            fig.add_trace(go.Scatter(x=epochs, y=weights[:, c], mode="lines", name=op, legendgroup=op,
                                     showlegend=first, line=dict(color=colour),
                                     hovertemplate=f"{name}: {op}<br>epoch %{{x}}: %{{y:.3f}}<extra></extra>"),
                          row=k // cols + 1, col=k % cols + 1)
    fig.update_layout(**_LAYOUT, height=80 + 210 * rows,
                      title=f"Architecture weights (softmax) of trial {trial.number}, {strategy_of(trial)}")
    fig.update_annotations(font_size=10)
    fig.update_xaxes(dtick=1 if len(epochs) <= 12 else None)
    return fig


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
    fig.update_layout(**_LAYOUT, title=f"Convergence: best {names[index]} so far against compute",
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
    fig.update_layout(**_LAYOUT, title=f"{names[index]} per strategy", yaxis_title=names[index], height=400,
                      showlegend=False)
    return fig
