"""Plotly figures of the architectures a NAS study evaluated and of their training: the architecture DNA,
operation frequencies over time, the search landscape (2-D MDS of `hamming` distances), learning curves
and a gradient run's architecture weights per epoch. The objectives' figures are in `_plots`.

Each function takes the study (a trial for `alpha_evolution`) and returns a `plotly.graph_objects.Figure`,
or None when there is nothing to draw (e.g. no gradient run for `alpha_evolution`). Trials are read as
stored: the decisions in `params`, the per-epoch `curve`, a gradient run's `alphas`, and the strategy that
proposed each trial.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from nasopt.analysis._plots import LAYOUT, hover, main_objective, metric_names, strategy_of

__all__ = ["architecture_dna", "op_frequencies", "hamming", "landscape", "learning_curves", "alpha_evolution"]


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
    fig.update_layout(**LAYOUT, title="Architecture DNA (decision x trial; colour = choice)",
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
    fig.update_layout(**LAYOUT, title=f"Operation frequencies over time (last {window} trials)",
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
            text=[hover(trials[k]) for k in have], hovertemplate="%{text}<extra></extra>"))
        if rest:
            fig.add_trace(go.Scatter(x=xy[rest, 0], y=xy[rest, 1], mode="markers", name=f"{label} (no value)",
                                     marker=dict(size=8, symbol=symbols[label], color="#c8c8c8"),
                                     text=[hover(trials[k]) for k in rest], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(**LAYOUT, title=f"Search landscape (2-D MDS of decision distances; colour = {names[index]})",
                      height=480, xaxis=dict(showticklabels=False, title=""), yaxis=dict(showticklabels=False, title=""),
                      legend=dict(x=1.12))
    return fig


# -- training -------------------------------------------------------------------------------------
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
            text=[hover(t)] * len(curve), hovertemplate="%{text}<br>epoch %{x}: %{y:.4f}<extra></extra>"))
        shown.add(label)
    fig.update_layout(**LAYOUT, title="Learning curves (validation top-1; dotted: pruned)", xaxis_title="epoch",
                      yaxis_title="validation accuracy", height=420)
    fig.update_xaxes(dtick=1 if max(len(t.user_attrs["curve"]) for t in trials) <= 20 else None)
    return fig


def decision_candidates(study: optuna.Study) -> dict[str, tuple[str, ...]]:
    """Each decision's candidate ops as a gradient method's supernet offers them (the names of its `alphas`),
    from the study's stored space: the space's supernet (or network) built through a chooser that records
    them. Imports torch, so it is asked only when a trial's params do not name an alpha's candidates (the
    mobile space decides kernel and expansion, its supernet one `mbconv_k3_e4`-style op per block); {} when
    the space cannot be rebuilt from the storage (a user's own space)."""
    try:
        from nasopt.export._rebuild import from_study
        from nasopt.ops import build_op
        from nasopt.space import random_arch

        rebuilt = from_study(study)
        seen: dict[str, tuple[str, ...]] = {}

        def record(name: str, candidates: Sequence[str], chosen: Any, C_in: int, C_out: int, stride: int,
                   **options: Any) -> Any:
            seen.setdefault(name, tuple(str(c) for c in candidates))
            return build_op(chosen if isinstance(chosen, str) and chosen in candidates else str(candidates[0]),
                            C_in, C_out, stride, **options)

        space, task = rebuilt.space, rebuilt.task
        if hasattr(space, "supernet"):
            space.supernet(task, record)
        else:
            space.build(random_arch(space, seed=0), task, record)
        return seen
    except Exception:  # a space or data this process cannot rebuild: the candidates stay numbered
        return {}


def _candidates(t: FrozenTrial, name: str, n: int, decisions: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Names of the `n` candidates of a decision's architecture weights, as far as the trial (or `decisions`,
    from `decision_candidates`) tells."""
    if decisions is not None and len(decisions.get(name, ())) == n:
        return [str(c) for c in decisions[name]]
    dist = t.distributions.get(name)
    if isinstance(dist, CategoricalDistribution) and len(dist.choices) == n:
        return [str(c) for c in dist.choices]
    head = name.rsplit(".e", 1)[0]  # a DARTS supernet edge `normal.n2.e3`: `none` + the node's ops
    dist = t.distributions.get(f"{head}.op0")
    if isinstance(dist, CategoricalDistribution) and len(dist.choices) + 1 == n:
        return ["none", *map(str, dist.choices)]
    return [f"#{k}" for k in range(n)]


def _named(t: FrozenTrial, names: Sequence[str], sizes: Sequence[int]) -> bool:
    return all(not _candidates(t, name, n)[0].startswith("#") for name, n in zip(names, sizes, strict=True))


def alpha_evolution(trial: FrozenTrial, max_panels: int = 32, study: optuna.Study | None = None) -> go.Figure | None:
    """A gradient run's softmax architecture weights per epoch: one panel per decision (edge), one line
    per candidate op, the same colour for an op in every panel. The candidates are named by op; where the
    trial's params do not name them, by the supernet of `study`'s space (`decision_candidates`)."""
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
    sizes = [len(alphas[-1]["weights"][name]) for name in names]
    decisions = decision_candidates(study) if study is not None and not _named(trial, names, sizes) else None
    for k, name in enumerate(names):
        weights = np.array([a["weights"][name] for a in alphas])  # (epochs, candidates)
        for c, op in enumerate(_candidates(trial, name, weights.shape[1], decisions)):
            first = op not in colours
            colour = colours.setdefault(op, next(palette))
            fig.add_trace(go.Scatter(x=epochs, y=weights[:, c], mode="lines", name=op, legendgroup=op,
                                     showlegend=first, line=dict(color=colour),
                                     hovertemplate=f"{name}: {op}<br>epoch %{{x}}: %{{y:.3f}}<extra></extra>"),
                          row=k // cols + 1, col=k % cols + 1)
    fig.update_layout(**LAYOUT, height=80 + 210 * rows,
                      title=f"Architecture weights (softmax) of trial {trial.number}, {strategy_of(trial)}")
    fig.update_annotations(font_size=10)
    fig.update_xaxes(dtick=1 if len(epochs) <= 12 else None)
    return fig
