"""One self-contained HTML report of a study: `write_report(study, "report.html")`.

The file carries plotly.js inline (no network needed to open it) and, in order: a summary with the
search metrics (trials by state, search cost in CPU/GPU hours, diversity as unique architectures and
mean pairwise distance), the Pareto set with each architecture's picture (at its own size: a wide
one scrolls, its text stays readable), the Pareto front (Optuna's 2-D/3-D plot and every objective
pair, infeasible trials marked), its evolution (fronts over time and Optuna's hypervolume history), the optimisation history per strategy, convergence against compute, a
strategy comparison (when several strategies share the study), decision importances (Optuna's
fANOVA), the architecture DNA, operation frequencies over time, the search landscape, learning
curves and the architecture-weight evolution of every gradient run.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nasopt._format import fmt
from nasopt.analysis import _plot_archs as arch_plots
from nasopt.analysis import _plots as plots
from nasopt.analysis._trust import front_warnings, trial_warnings
from nasopt.artifacts._pictures import picture_ids, picture_svg

__all__ = ["write_report", "search_metrics", "render_report"]


def _hours(t: FrozenTrial) -> float:
    return t.duration.total_seconds() / 3600 if t.duration is not None else 0.0


def _device(t: FrozenTrial) -> str:
    latency = t.user_attrs.get("latency")
    return "gpu" if isinstance(latency, dict) and str(latency.get("device", "cpu")).startswith("cuda") else "cpu"


def search_metrics(study: optuna.Study) -> dict[str, Any]:
    """Trials by state, search cost (CPU and GPU hours), diversity, the best value of each objective."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    archs = [t.params for t in finished if t.params]
    unique = {tuple(sorted((k, repr(v)) for k, v in a.items())) for a in archs}
    distinct = [dict(u) for u in unique]
    pairs = [arch_plots.hamming(a, b) for i, a in enumerate(distinct) for b in distinct[i + 1:]]
    cost = {"cpu": 0.0, "gpu": 0.0}
    for t in finished:
        cost[_device(t)] += _hours(t)
    names = plots.metric_names(study)
    best: dict[str, float] = {}
    complete = [t for t in trials if t.state == TrialState.COMPLETE and plots.feasible(t)]
    for i, (name, direction) in enumerate(zip(names, study.directions, strict=True)):
        if complete:
            pick = max if direction == optuna.study.StudyDirection.MAXIMIZE else min
            best[name] = float(pick(t.values[i] for t in complete))
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return {"trials": len(trials), "states": states, "infeasible": sum(not plots.feasible(t) for t in finished),
            "cpu_hours": cost["cpu"], "gpu_hours": cost["gpu"], "unique_architectures": len(unique),
            "evaluated_architectures": len(archs),
            "mean_pairwise_distance": float(np.mean(pairs)) if pairs else 0.0, "best": best,
            "strategies": sorted({plots.strategy_of(t) for t in finished})}


def _pareto(study: optuna.Study) -> list[FrozenTrial]:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if plots.feasible(t)]
    if not complete:
        return []
    signs = np.array([1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions])
    values = np.array([t.values for t in complete])
    front = [t for t, d in zip(complete, plots.dominated(values, signs), strict=True) if not d]
    index = plots.main_objective(study)
    return sorted(front, key=lambda t: -signs[index] * t.values[index])


def _stored_picture(study: optuna.Study, t: FrozenTrial, store: Any, attrs: Any) -> str | None:
    for artifact_id in picture_ids(study, t, attrs) if store is not None else []:
        try:
            with store.open_reader(artifact_id) as f:
                return f.read().decode()
        except Exception:  # missing or unreadable: draw it from the params instead
            continue
    return None


def _picture(study: optuna.Study, t: FrozenTrial, store: Any, k: int, attrs: Any) -> str:
    svg = _stored_picture(study, t, store, attrs) or picture_svg(t.params, title=t.user_attrs.get("arch"))
    svg = svg.replace('id="arrow"', f'id="arrow{k}"').replace("url(#arrow)", f"url(#arrow{k})")
    return svg[svg.index("<svg"):]  # drop an XML prolog, if any


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[Any]],
           metrics: Sequence[str | None] | None = None) -> str:
    """An HTML table; each cell by the one rule of `nasopt._format` (as `nasopt show` prints it) under its
    column's metric: `metrics`, else the header ("best accuracy" is accuracy), else a row's label."""
    head = "" if header is None else \
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>"
    if metrics is None and header is not None:
        metrics = [h.removeprefix("best ") for h in header]

    def metric(row: Sequence[Any], i: int) -> str | None:
        if metrics is not None:
            return metrics[i]
        return str(row[0]).removeprefix("best ") if i > 0 else None  # a summary row: (label, value)

    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c, metric(row, i)))}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _strategy_rows(study: optuna.Study) -> list[list[Any]]:
    names = plots.metric_names(study)
    index = plots.main_objective(study)
    pareto = {t.number for t in _pareto(study)}
    rows = []
    groups: dict[str, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished():
            groups.setdefault(plots.strategy_of(t), []).append(t)
    sign = 1.0 if study.directions[index] == optuna.study.StudyDirection.MAXIMIZE else -1.0
    for label, trials in groups.items():
        done = [t for t in trials if t.state == TrialState.COMPLETE and plots.feasible(t)]
        best = max((sign * t.values[index] for t in done), default=None)
        rows.append([label, len(trials), len(done), "" if best is None else sign * best,
                     sum(t.number in pareto for t in trials), sum(_hours(t) for t in trials),
                     len({repr(sorted(t.params.items())) for t in trials if t.params})])
    return [["strategy", "finished", "complete & feasible", f"best {names[index]}", "on the Pareto front",
             "compute hours", "unique architectures"], *rows]


def _int8_rows(front: list[FrozenTrial]) -> tuple[list[str], list[list[Any]], list[str | None]]:
    """Each trial's int8 model (nasopt.measure._int8) beside its fp32 network, both run in onnxruntime."""
    rows = []
    for t in front:
        rec = t.user_attrs.get("int8")
        if isinstance(rec, dict):
            fp32, latency = (rec.get("fp32_latency") or {}).get("median_ms"), rec.get("latency") or {}
            rows.append([t.number, t.user_attrs.get("accuracy", ""), "" if rec.get("accuracy") is None else
                         rec["accuracy"], "" if rec.get("agreement") is None else rec["agreement"], fp32 or "",
                         rec.get("latency_ms", ""), rec["latency_ms"] / fp32 if fp32 else "", rec.get("kb", ""),
                         f"{latency.get('device_name', '')}, {latency.get('threads', '')} threads"])
    return ["trial", "fp32 accuracy", "int8 accuracy", "int8 = fp32 class", "fp32 ms (onnxruntime)", "int8 ms",
            "int8 / fp32 time", "int8 KB", "measured on"], rows, ["trial", "accuracy", "int8_accuracy", "agreement",
                                                                  "latency_ms", "int8_latency_ms", "ratio", "int8_kb", None]


def render_report(study: optuna.Study, store: Any = None) -> str:
    """The report's HTML text (see the module doc); `store` is the artifact store with the pictures."""
    from plotly.offline import get_plotlyjs

    names = plots.metric_names(study)
    metrics = search_metrics(study)
    sections: list[tuple[str, str, list[Any]]] = []  # (id, title, [html or figure])
    summary = _table(None, [
        ["trials", metrics["trials"]],
        ["by state", ", ".join(f"{k} {v}" for k, v in sorted(metrics["states"].items()))],
        ["infeasible (over a hard limit)", metrics["infeasible"]],
        ["search cost", f"{metrics['cpu_hours']:.4f} CPU hours, {metrics['gpu_hours']:.4f} GPU hours"],
        ["unique architectures", f"{metrics['unique_architectures']} of {metrics['evaluated_architectures']} "
                                 "evaluated"],
        ["mean pairwise distance", f"{metrics['mean_pairwise_distance']:.3f} (share of decisions that differ)"],
        ["strategies", ", ".join(metrics["strategies"])],
        *[[f"best {k}", v] for k, v in metrics["best"].items()],
    ])
    sections.append(("summary", "Summary and search metrics", [summary]))
    front = _pareto(study)
    if front:
        rows = [[t.number, plots.strategy_of(t), *t.values, t.user_attrs.get("arch", "")] for t in front]
        attrs = study._storage.get_study_system_attrs(study._study_id)
        pictures = "".join(f'<figure>{_picture(study, t, store, k, attrs)}<figcaption>trial {t.number}</figcaption></figure>'
                           for k, t in enumerate(front[:8]))
        sections.append(("pareto-set", "Pareto set" if len(names) > 1 else "Best trial",
                         [_table(["trial", "strategy", *names, "architecture"], rows,
                                 ["trial", None, *names, None]),
                          f'<div class="pictures">{pictures}</div>']))
        if any(isinstance(t.user_attrs.get("int8"), dict) for t in front):
            sections.append(("int8", "int8 against fp32 (the Pareto set)", [_table(*_int8_rows(front))]))
        warnings = trial_warnings(front) + front_warnings(front, names)  # what should not be trusted, said
        if warnings:
            listed = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
            sections.insert(1, ("warnings", "Warnings", [f'<ul class="warnings">{listed}</ul>']))
    if len(names) > 1:  # a single objective has a best trial, no front
        sections.append(("pareto", "Pareto front", [plots.pareto_front(study), plots.pareto_pairs(study)]))
        sections.append(("pareto-time", "Pareto front over time",
                         [plots.pareto_evolution(study), plots.hypervolume_history(study)]))
    sections.append(("history", "Optimisation history per strategy",
                     [plots.history_by_strategy(study), plots.convergence(study, _hours)]))
    if len(metrics["strategies"]) > 1:
        header, *rows = _strategy_rows(study)
        sections.append(("strategies", "Strategy comparison", [_table(header, rows), plots.strategy_box(study)]))
    sections.append(("importance", "Decision importances", list(plots.importances(study))))
    sections.append(("dna", "Architecture DNA", [arch_plots.architecture_dna(study)]))
    sections.append(("ops", "Operation frequencies over time", [arch_plots.op_frequencies(study)]))
    sections.append(("landscape", "Search landscape", [arch_plots.landscape(study)]))
    sections.append(("curves", "Learning curves", [arch_plots.learning_curves(study)]))
    gradient = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("alphas")]
    sections.append(("alphas", "Architecture weights of the gradient runs",
                     [arch_plots.alpha_evolution(t, study=study) for t in gradient]))

    parts, toc = [], []
    for anchor, title, items in sections:
        blocks = [i if isinstance(i, str) else i.to_html(full_html=False, include_plotlyjs=False,
                                                         config={"displaylogo": False, "responsive": True})
                  for i in items if i is not None]
        if not blocks:
            why = "no gradient run in this study" if anchor == "alphas" else "too few finished trials"
            blocks = [f'<p class="none">Nothing to show: {why}.</p>']
        toc.append(f'<a href="#{anchor}">{html.escape(title)}</a>')
        parts.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{"".join(blocks)}</section>')
    info = study.user_attrs.get("nasopt") or {}
    subtitle = ", ".join(f"{k}: {html.escape(str(info[k]))}" for k in ("space", "dataset") if k in info)
    objectives = ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions, strict=True))
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nasopt report: {html.escape(study.study_name)}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 24px 60px; color: #222; }}
h1 {{ margin-bottom: 4px; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 40px; }}
.sub {{ color: #555; }} nav a {{ margin-right: 14px; font-size: 14px; }}
table {{ border-collapse: collapse; margin: 10px 0; font-size: 14px; }}
td, th {{ border: 1px solid #ddd; padding: 4px 10px; text-align: left; }} th {{ background: #f4f6f8; }}
.pictures {{ display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }}
figure {{ margin: 0; border: 1px solid #e4e4e4; padding: 6px; max-width: 100%; box-sizing: border-box; overflow-x: auto; }}
figure svg {{ display: block; max-width: none; }} /* drawn at its own size: a wide network scrolls, its text stays readable */
figcaption {{ font-size: 13px; color: #555; text-align: center; }} .none {{ color: #777; }}
</style></head><body>
<h1>nasopt report: {html.escape(study.study_name)}</h1>
<p class="sub">{subtitle}{"; " if subtitle else ""}objectives: {objectives}; written {when}</p>
<nav>{"".join(toc)}</nav>
{"".join(parts)}
</body></html>
"""


def write_report(study: optuna.Study, path: str | Path, store: Any = None) -> Path:
    """Write the report of `study` to `path` (one HTML file, plotly.js inline); returns the path."""
    path = Path(path)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" lines
    try:
        text = render_report(study, store)
    finally:
        optuna.logging.set_verbosity(level)
    path.write_text(text, encoding="utf-8")
    return path
