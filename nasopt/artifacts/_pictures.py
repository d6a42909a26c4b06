"""Architecture pictures (SVG written here, no plotting library) and the artifacts the dashboard shows.

`to_svg(graph)` draws the DAG of `nasopt.artifacts._graph.arch_graph`: a layered top-to-bottom layout (longest
path, op nodes pulled down next to the state they feed, a few barycenter sweeps against crossings),
edges that skip layers bent round the side, nodes coloured by op family, stages of a block chain
boxed, one panel per cell type. SVG is text, so pictures need neither kaleido nor a browser.

Artifacts of a trial, through Optuna's artifact store (`<db>.artifacts/` beside an SQLite file):

- `save_picture(trial, space, arch, ...)`: the picture of a RUNNING trial (Optuna's `upload_artifact`;
  its id goes to the `picture_artifact` user attr);
- `keep_weights(trial, model, values, ...)`: the trained state dict of a trial that no finished trial
  dominates (Pareto-optimal, or the best of a single-objective study, when it finishes);
- `draw_missing(study, store, ...)`: pictures for finished trials that have none (older studies),
  written where optuna-dashboard also looks for a trial's artifacts (the study's system attrs), since a
  finished trial's own attrs can no longer change.

The dashboard lists a trial's artifacts as ~130 px thumbnails, so the picture also goes into the trial's
note (`nasopt.artifacts._notes.picture_note`: Markdown that optuna-dashboard renders at the top of the
trial page, as wide as the page allows, linked to the file at full size), through optuna-dashboard's own
`save_note`. A note the user wrote is never replaced.

None of these ever fails a trial: a picture that cannot be drawn is logged and skipped.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import networkx as nx
import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial, TrialState

from nasopt.artifacts._graph import arch_graph
from nasopt.artifacts._inherit import artifact_store_for, save_weights
from nasopt.artifacts._notes import TrialRef, note_picture
from nasopt.keys import PICTURE_ATTR, WEIGHTS_ATTR

__all__ = ["to_svg", "picture_svg", "save_picture", "keep_weights", "draw_missing", "picture_ids",
           "PICTURE_ATTR", "PICTURE_SUFFIX"]

PICTURE_SUFFIX = "_architecture.svg"
_DASHBOARD_PREFIX = "dashboard:artifacts:"  # optuna-dashboard's study-level record of a trial's artifact
_log = logging.getLogger("nasopt")

# op family -> (fill, stroke)
_COLOURS = {
    "conv": ("#dbe8f6", "#3b6ea5"), "sep": ("#d4efe9", "#24877a"), "dil": ("#e3f3d8", "#4f8a2b"),
    "pool": ("#fde5c8", "#c46a00"), "skip": ("#eeeeee", "#777777"), "dead": ("#ffffff", "#b5b5b5"),
    "norm": ("#ece0f5", "#7a4fa0"), "state": ("#fff6d5", "#a07800"), "io": ("#e4e4e4", "#444444"),
    "other": ("#f5f5f5", "#666666"),
}
_MBCONV = {3: ("#dbe8f6", "#3b6ea5"), 5: ("#b9d3ee", "#2c5b8f"), 7: ("#93bbe4", "#1f4a78")}
_H, _GAP_Y, _GAP_X, _CHAR, _PAD = 34, 26, 18, 6.6, 14
# text styles as attributes, not a <style> block: an SVG inlined in an HTML page would restyle the page
_MID = 'text-anchor="middle"'
_OP, _SHAPE = f'{_MID} font-size="11.5" fill="#222"', f'{_MID} font-size="9.5" fill="#555"'
_HEADING, _TITLE = f'{_MID} font-size="13" font-weight="bold" fill="#222"', f'{_MID} font-size="13" fill="#333"'
_GROUP = 'text-anchor="start" font-size="11" fill="#5a7394"'


def _family(data: Mapping[str, Any]) -> tuple[str, str]:
    op, kind = str(data.get("op", "")), data.get("kind")
    if kind in ("input", "output", "stem", "head"):
        return _COLOURS["io"]
    if kind == "state":
        return _COLOURS["state"]
    if data.get("dead") or op in ("none", "zero"):
        return _COLOURS["dead"]
    if op.startswith("mbconv"):
        return _MBCONV.get(int(data.get("kernel") or 3), _MBCONV[3])
    for key, family in (("sep", "sep"), ("dil", "dil"), ("pool", "pool"), ("skip", "skip"), ("batchnorm", "norm"),
                        ("dropout", "norm"), ("conv", "conv"), ("linear", "conv")):
        if key in op:
            return _COLOURS[family]
    return _COLOURS["other"]


def _shape_text(shape: Sequence[int] | None) -> str:
    return "\u00d7".join(str(s) for s in shape) if shape else ""


# -- layout ---------------------------------------------------------------------------------------
def _layers(g: nx.DiGraph) -> dict[Any, int]:
    """Longest-path layers, then every node with successors pulled down to just above the nearest one."""
    layer: dict[Any, int] = {}
    order = list(nx.topological_sort(g))
    for n in order:
        layer[n] = max((layer[p] + 1 for p in g.predecessors(n)), default=0)
    for n in reversed(order):
        succ = [layer[s] for s in g.successors(n)]
        if succ and g.in_degree(n) > 0:
            layer[n] = max(layer[n], min(succ) - 1)
    return layer


def _order(g: nx.DiGraph, layer: Mapping[Any, int]) -> list[list[Any]]:
    rows: list[list[Any]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for n in g.nodes:  # insertion order first: the spaces add nodes in data-flow order
        rows[layer[n]].append(n)
    for _ in range(4):  # barycenter sweeps, down then up
        for rows_seq, neighbours in ((rows[1:], g.predecessors), (rows[-2::-1], g.successors)):
            pos = {n: i for row in rows for i, n in enumerate(row)}
            for row in rows_seq:
                centre = {}
                for n in row:
                    near = [pos[m] for m in neighbours(n)]
                    centre[n] = sum(near) / len(near) if near else pos[n]
                row.sort(key=centre.__getitem__)
                pos.update({n: i for i, n in enumerate(row)})
    return rows


def _width(data: Mapping[str, Any]) -> float:
    text = max(len(str(data.get("label", ""))), len(_shape_text(data.get("shape"))) * 0.85)
    return max(64.0, text * _CHAR + 2 * _PAD) if data.get("kind") != "state" else max(34.0, text * _CHAR + 16)


def _place(g: nx.DiGraph) -> tuple[dict[Any, tuple[float, float]], float, float]:
    """Node centres (x, y) and the panel's width and height."""
    layer = _layers(g)
    rows = _order(g, layer)
    widths = [sum(_width(g.nodes[n]) for n in row) + _GAP_X * (len(row) - 1) for row in rows]
    full = max(widths, default=0.0)
    pos: dict[Any, tuple[float, float]] = {}
    for r, row in enumerate(rows):
        x = (full - widths[r]) / 2
        for n in row:
            w = _width(g.nodes[n])
            pos[n] = (x + w / 2, r * (_H + _GAP_Y) + _H / 2)
            x += w + _GAP_X
    return pos, full, len(rows) * (_H + _GAP_Y) - _GAP_Y


# -- drawing --------------------------------------------------------------------------------------
def _edge(x1: float, y1: float, x2: float, y2: float, reach: float | None, dashed: bool) -> str:
    """A curve from the bottom of one node to the top of another; `reach` is the x that an edge skipping
    layers must pass (beside the nodes in between), None for a direct edge."""
    style = ' stroke-dasharray="4 3"' if dashed else ""
    y1, y2 = y1 + _H / 2, y2 - _H / 2 - 2
    if reach is None:
        mid = (y1 + y2) / 2
        d = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}"
    else:  # both control points at c: the curve's extreme x is (x1 + 6c + x2) / 8 = reach
        c = (8 * reach - x1 - x2) / 6
        d = f"M{x1:.1f},{y1:.1f} C{c:.1f},{y1 + 12:.1f} {c:.1f},{y2 - 12:.1f} {x2:.1f},{y2:.1f}"
    return f'<path d="{d}" fill="none" stroke="#8a8a8a" stroke-width="1.3"{style} marker-end="url(#arrow)"/>'


def _node_svg(data: Mapping[str, Any], x: float, y: float) -> str:
    fill, stroke = _family(data)
    w = _width(data)
    dashed = ' stroke-dasharray="4 3"' if data.get("dead") else ""
    label, shape = escape(str(data.get("label", ""))), escape(_shape_text(data.get("shape")))
    rx = _H / 2 if data.get("kind") == "state" else 6
    parts = [f'<rect x="{x - w / 2:.1f}" y="{y - _H / 2:.1f}" width="{w:.1f}" height="{_H}" rx="{rx}" '
             f'fill="{fill}" stroke="{stroke}" stroke-width="1.4"{dashed}/>']
    if shape:
        parts.append(f'<text x="{x:.1f}" y="{y - 2:.1f}" {_OP}>{label}</text>')
        parts.append(f'<text x="{x:.1f}" y="{y + 11:.1f}" {_SHAPE}>{shape}</text>')
    else:
        parts.append(f'<text x="{x:.1f}" y="{y + 4:.1f}" {_OP}>{label}</text>')
    return "".join(parts)


def _panel(g: nx.DiGraph, heading: str | None) -> tuple[list[str], float, float]:
    """SVG elements of one connected drawing at origin (0, 0), with its width and height."""
    pos, width, height = _place(g)
    top = 24.0 if heading else 0.0
    margin = 60.0  # room for edges bent round the side
    out: list[str] = []
    if heading:
        out.append(f'<text x="{margin + width / 2:.1f}" y="14" {_HEADING}>{escape(heading)}</text>')
    groups: dict[str, list[Any]] = {}
    for n, data in g.nodes(data=True):
        if data.get("group") and g.graph.get("layout") == "chain":
            groups.setdefault(str(data["group"]), []).append(n)
    for name, nodes in groups.items():  # stages of a block chain: a light box with the stage's name
        ys = [pos[n][1] for n in nodes]
        x0 = min(pos[n][0] - _width(g.nodes[n]) / 2 for n in nodes) - 8
        x1 = max(pos[n][0] + _width(g.nodes[n]) / 2 for n in nodes) + 8
        y0, y1 = min(ys) - _H / 2 - 6, max(ys) + _H / 2 + 6
        out.append(f'<rect x="{margin + x0:.1f}" y="{top + y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" '
                   f'rx="8" fill="#f7f9fc" stroke="#c9d6e6" stroke-dasharray="3 3"/>')
        out.append(f'<text x="{margin + x1 + 6:.1f}" y="{top + (y0 + y1) / 2 + 4:.1f}" {_GROUP}>'
                   f'{escape(name)}</text>')
    layer = {n: round((pos[n][1] - _H / 2) / (_H + _GAP_Y)) for n in g.nodes}
    for k, (u, v) in enumerate(g.edges):
        (x1, y1), (x2, y2) = pos[u], pos[v]
        between = [n for n in g.nodes if layer[u] < layer[n] < layer[v]]
        lo, hi = min(x1, x2), max(x1, x2)
        blocking = [n for n in between if pos[n][0] - _width(g.nodes[n]) / 2 - 4 < hi
                    and pos[n][0] + _width(g.nodes[n]) / 2 + 4 > lo]
        reach = None
        if blocking:  # go round the nodes in the way, on the side the edge leans to
            span = layer[v] - layer[u]
            if x2 > x1 or (x2 == x1 and k % 2 == 0):
                reach = max(pos[n][0] + _width(g.nodes[n]) / 2 for n in blocking) + 10 + 6 * span
            else:
                reach = min(pos[n][0] - _width(g.nodes[n]) / 2 for n in blocking) - 10 - 6 * span
        dashed = bool(g.nodes[u].get("dead") or g.nodes[v].get("dead"))
        out.append(_edge(margin + x1, top + y1, margin + x2, top + y2, None if reach is None else margin + reach,
                         dashed))
    for n, data in g.nodes(data=True):
        out.append(_node_svg(data, margin + pos[n][0], top + pos[n][1]))
    return out, width + 2 * margin + (80 if groups else 0), height + top


def to_svg(g: nx.DiGraph, title: str | None = None) -> str:
    """An SVG document of the architecture graph: one panel per cell type (side by side) or one chain."""
    if g.graph.get("layout") == "cells":
        cells = g.graph.get("cells") or sorted({d.get("group") for _, d in g.nodes(data=True)})
        names = {"normal": "normal cell", "reduce": "reduction cell", "cell": "cell"}
        panels = [_panel(g.subgraph([n for n, d in g.nodes(data=True) if d.get("group") == c]).copy(),
                         names.get(c, f"{c} cell")) for c in cells]
    else:
        panels = [_panel(g, None)]
    title = title if title is not None else g.graph.get("title")
    head = 30.0 if title else 8.0
    width = max(sum(w for _, w, _ in panels), 8 * len(title or "") + 20, 120)
    height = head + max((h for _, _, h in panels), default=0) + 16
    body, x = [], 0.0
    for elements, w, _ in panels:
        body.append(f'<g transform="translate({x:.1f},{head:.1f})">' + "".join(elements) + "</g>")
        x += w
    caption = f'<text x="{width / 2:.1f}" y="20" {_TITLE}>{escape(title)}</text>' if title else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{math.ceil(width)}" height="{math.ceil(height)}" '
            f'viewBox="0 0 {math.ceil(width)} {math.ceil(height)}" font-family="Helvetica, Arial, sans-serif">'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8a8a8a"/></marker>'
            '</defs>'
            f'<rect width="100%" height="100%" fill="white"/>{caption}{"".join(body)}</svg>')


def picture_svg(arch: Mapping[str, Any], space: Any = None, *, input_shape: Sequence[int] | None = None,
                num_classes: int = 10, title: str | None = None, kind: str = "classify") -> str:
    """The SVG picture of an architecture (shapes traced when `space` and `input_shape` are given; `kind`
    the task's, for its head)."""
    return to_svg(arch_graph(arch, space, input_shape=input_shape, num_classes=num_classes, kind=kind), title)


# -- artifacts ------------------------------------------------------------------------------------
def _store(storage: Any, store: Any, directory: str | None) -> Any:
    """`store`, else the study's own (as `nasopt.run` makes it: `directory`, else `<db>.artifacts/` beside
    an SQLite file, else `./nasopt-artifacts`); None for an in-memory study with no `directory`."""
    if store is not None:
        return store
    backend = getattr(storage, "_backend", storage)
    if directory is None and isinstance(backend, optuna.storages.InMemoryStorage):
        return None
    url = getattr(backend, "url", None)
    if url is None:  # a journal storage has no URL: its file is its backend's (artifacts go beside it)
        path = getattr(backend, "_file_path", None) or getattr(getattr(backend, "_backend", None), "_file_path", None)
        url = f"journal:///{Path(path).resolve()}" if path else "journal:"
    return artifact_store_for(url, directory)


def _task_shape(task: Any) -> tuple[Sequence[int] | None, int, str]:
    return (getattr(task, "input_shape", None), int(getattr(task, "num_classes", 10) or 10),
            str(getattr(task, "kind", None) or "classify"))


def save_picture(trial: optuna.Trial, space: Any, arch: Mapping[str, Any], store: Any = None, *,
                 task: Any = None, directory: str | None = None) -> str | None:
    """Upload the architecture picture of a running trial as `trial{N}_architecture.svg`; returns the
    artifact id (None when it could not be drawn, or the study keeps no files). `task` gives the
    shapes; `store` defaults to the study's (`directory`, else `<db>.artifacts/`)."""
    try:
        store = _store(trial.storage, store, directory)
        if store is None:
            return None
        input_shape, num_classes, kind = _task_shape(task)
        title = f"trial {trial.number}: {space.describe(arch)}"
        svg = picture_svg(arch, space, input_shape=input_shape, num_classes=num_classes, kind=kind, title=title)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"trial{trial.number}{PICTURE_SUFFIX}")
            with open(path, "w") as f:
                f.write(svg)
            artifact_id = upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial,
                                          mimetype="image/svg+xml")
        trial.set_user_attr(PICTURE_ATTR, artifact_id)
        note_picture(trial, artifact_id, title)
        return artifact_id
    except Exception as e:  # a picture is never worth a failed trial
        _log.warning("trial %s: no architecture picture (%s: %s)", trial.number, type(e).__name__, e)
        return None


def _dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[Any]) -> bool:
    sign = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in directions]
    better = [s * x >= s * y for s, x, y in zip(sign, a, b, strict=True)]
    return all(better) and any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))


def _feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def keep_weights(trial: optuna.Trial, model: Any, values: Sequence[float], store: Any = None, *,
                 directory: str | None = None) -> str | None:
    """Store the trained weights of a finishing trial that no COMPLETE trial dominates (a Pareto-optimal
    or best trial at the time it finishes). As in Optuna's `best_trials`, an infeasible trial (a constraint
    above 0) never dominates a feasible one, so the feasible front always has its weights. Returns the
    artifact id, or None when not kept."""
    try:
        if trial.user_attrs.get(WEIGHTS_ATTR):  # weight inheritance stored them already
            return str(trial.user_attrs[WEIGHTS_ATTR])
        directions = trial.study.directions
        feasible = _feasible(trial.study._storage.get_trial(trial._trial_id))
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number != trial.number and t.values is not None and (_feasible(t) or not feasible) \
                    and _dominates(t.values, values, directions):
                return None
        store = _store(trial.storage, store, directory)
        return None if store is None else save_weights(trial, model, store)
    except Exception as e:
        _log.warning("trial %s: weights not kept (%s: %s)", trial.number, type(e).__name__, e)
        return None


def picture_ids(study: optuna.Study, trial: FrozenTrial, study_attrs: Mapping[str, Any] | None = None) -> list[str]:
    """Artifact ids of the trial's architecture pictures, wherever they were recorded (`study_attrs`: the
    study's system attrs, when the caller has them already)."""
    if study_attrs is None:
        study_attrs = study._storage.get_study_system_attrs(study._study_id)
    metas = [v for k, v in trial.system_attrs.items() if k.startswith("artifacts:")]
    prefix = f"{_DASHBOARD_PREFIX}{trial._trial_id}:"
    metas += [v for k, v in study_attrs.items() if k.startswith(prefix)]
    ids = []
    for meta in metas:
        meta = json.loads(meta) if isinstance(meta, str) else meta
        if meta and str(meta.get("filename", "")).endswith(PICTURE_SUFFIX):
            ids.append(meta["artifact_id"])
    return ids


def draw_missing(study: optuna.Study, store: Any, space: Any = None, *, task: Any = None) -> int:
    """Draw a picture for every finished trial with params but no picture; returns how many were drawn.
    A trial with a picture but no note (a study from before notes, or a trial that reused another's
    picture) gets the note.

    The picture is recorded in the study's system attrs under optuna-dashboard's key for that trial
    (`dashboard:artifacts:<trial_id>:<artifact_id>`), which the dashboard lists with the trial's own."""
    input_shape, num_classes, kind = _task_shape(task)
    study_attrs = study._storage.get_study_system_attrs(study._study_id)
    drawn = 0
    for t in study.get_trials(deepcopy=False):
        if not t.state.is_finished() or not t.params:
            continue
        pictures = picture_ids(study, t, study_attrs)
        if pictures:
            arch = t.user_attrs.get("arch") or (space.describe(t.params) if space is not None else "")
            note_picture(TrialRef(study, t._trial_id), pictures[0], f"trial {t.number}: {arch}".rstrip(": "))
            continue
        try:
            title = f"trial {t.number}: {space.describe(t.params)}" if space is not None else f"trial {t.number}"
            svg = picture_svg(t.params, space, input_shape=input_shape, num_classes=num_classes, title=title,
                              kind=kind)
        except Exception as e:
            _log.warning("trial %s: no architecture picture (%s: %s)", t.number, type(e).__name__, e)
            continue
        artifact_id = str(uuid.uuid4())
        meta = {"artifact_id": artifact_id, "filename": f"trial{t.number}{PICTURE_SUFFIX}",
                "mimetype": "image/svg+xml", "encoding": None}
        store.write(artifact_id, io.BytesIO(svg.encode()))
        study._storage.set_study_system_attr(study._study_id, f"{_DASHBOARD_PREFIX}{t._trial_id}:{artifact_id}",
                                             json.dumps(meta))
        note_picture(TrialRef(study, t._trial_id), artifact_id, title)
        drawn += 1
    return drawn
