"""Every architecture as a networkx DAG: the graph encoding the pictures are drawn from.

Nodes are the network's operations and states in data-flow order; each carries

- `op`        the op name (`sep_conv_3x3`, `mbconv_k5_e6`, `conv3x3`, ...) or a structural role
              (`input`, `stem`, `add`, `concat`, `head`)
- `kind`      `input` | `stem` | `op` | `state` | `output` | `head`
- `label`     a short text for drawing
- `decision`  the trial param the node comes from (None for fixed structure)
- `shape`     the per-sample output shape `(C, H, W)` / `(C, L)` when traced, else None
- `group`     the cell type (`normal`, `reduce`, `cell`) or stage (`stage2`) it belongs to

The structure is read from the params alone, by their names (the spaces' naming scheme): DARTS-style
cells (`{t}.n{k}.in{j}` / `op{j}`: darts_cell, conv1d), NAS-Bench-201's cell (`edge.{i}<-{j}`), the
nano chain (`pos{i}.op`), mobile's block chain (`stage{s}.depth`, kernel, expand) and the layers
genome (`n_layers`, `layer{i}.*`). A space may define `graph(arch)` to give its own; anything else
becomes a chain of its decisions. With the space and an input shape, the network is built once and
run on one zero sample, and forward hooks on the chooser's modules give every node its shape (for
repeated cells: the first cell of each type). The graph attribute `layout` says how to draw it:
`cells` (one DAG per cell type) or `chain`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import networkx as nx

__all__ = ["arch_graph", "trace_shapes"]

Shape = tuple[int, ...]
_CELL = re.compile(r"^(\w+)\.n(\d+)\.op([01])$")
_NB201 = re.compile(r"^edge\.(\d+)<-(\d+)$")
_STRUCTURAL = ("skip", "skip_connect", "none", "zero")


def trace_shapes(space: Any, arch: Mapping[str, Any], input_shape: Sequence[int],
                 num_classes: int = 10, kind: str = "classify") -> dict[str, tuple[Shape, Shape]]:
    """`{decision: (input shape, output shape)}` of one sample, from the first module built for each
    decision; `"stem"` and `"network"` too. Raises whatever building or running the network raises.

    Every op except the identities and zeros is built as a weightless stand-in of the same output shape
    (`C_out` channels, strided like the op), so tracing a 20-cell evaluation network costs milliseconds,
    not the seconds its convolutions would."""
    import torch  # here, not at the top: drawing a picture from params alone (the report) needs no torch
    from torch import nn

    from nasopt.space import fixed

    class _StandIn(nn.Module):
        """Zeros of an op's output shape: `C_out` channels, every spatial dim strided (see `trace_shapes`)."""

        def __init__(self, C_out: int, stride: int) -> None:
            super().__init__()
            self.C_out, self.stride = C_out, stride

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * (x.dim() - 2)]
            return x.new_zeros(x.shape[0], self.C_out, *x.shape[2:])  # (N, C_out, ceil(H / stride), ...)

    modules: list[tuple[str, Any]] = []

    def choose(name: str, candidates: Sequence[str], chosen: str | None, C_in: int, C_out: int, stride: int,
               **options: Any) -> Any:
        if chosen in _STRUCTURAL:  # identities may be left out of the network: keep their type
            module = fixed(name, candidates, chosen, C_in, C_out, stride, **options)
        else:
            module = _StandIn(C_out, stride)
        modules.append((name, module))
        return module

    task = SimpleNamespace(input_shape=tuple(input_shape), num_classes=num_classes, name="picture", kind=kind)
    model = space.build(arch, task, choose)
    stem = getattr(model, "stem", None)
    stem = getattr(model, "stem0", None) if stem is None else stem
    if isinstance(stem, nn.Module):
        modules.append(("stem", stem))
    shapes: dict[str, tuple[Shape, Shape]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_module: Any, inputs: Any, output: Any) -> None:
            if name not in shapes and inputs and hasattr(inputs[0], "shape") and hasattr(output, "shape"):
                shapes[name] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules]
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    shapes["network"] = (tuple(input_shape), tuple(out.shape[1:]))
    return shapes


def arch_graph(arch: Mapping[str, Any], space: Any = None, *, input_shape: Sequence[int] | None = None,
               num_classes: int = 10, kind: str = "classify") -> nx.DiGraph:
    """The DAG of `arch` (see the module doc). Shapes are traced when `space` and `input_shape` are given;
    if building fails the graph is still returned, without shapes. `kind` is the task's (`Task.kind`): a
    dense task's head is drawn as the per-position 1x1 conv it is."""
    if space is not None and callable(getattr(space, "graph", None)):
        return space.graph(arch)
    shapes: dict[str, tuple[Shape, Shape]] = {}
    if space is not None and input_shape is not None:
        try:
            shapes = trace_shapes(space, arch, input_shape, num_classes, kind)
        except Exception:  # a picture without shapes beats no picture
            shapes = {}
    names = set(arch)
    if any(_CELL.match(n) for n in names):
        g = _darts_cells(arch, space, shapes)
    elif any(_NB201.match(n) for n in names):
        g = _nb201_cell(arch, shapes)
    elif "stage1.depth" in names:
        g = _mobile_chain(arch, shapes)
    elif "n_layers" in names:
        g = _layers_chain(arch, shapes)
    elif any(re.match(r"^pos\d+\.op$", n) for n in names):
        g = _nano_chain(arch, shapes)
    else:
        g = _generic_chain(arch, shapes)
    if kind == "dense":  # a 1x1 conv per position, upsampled to the input's size, in place of pool + linear
        for node, label in (("dense", f"1x1 conv {arch.get('dense.units')}"), ("head", "1x1 conv + upsample")):
            if node in g and g.nodes[node]["kind"] in ("op", "head"):
                g.nodes[node]["label"] = label
                g.nodes[node]["shape"] = None if node == "dense" else g.nodes[node]["shape"]
    g.graph.setdefault("space", type(space).__name__ if space is not None else None)
    if space is not None:
        try:
            g.graph["title"] = space.describe(arch)
        except Exception:
            pass
    return g


# -- helpers --------------------------------------------------------------------------------------
def _node(g: nx.DiGraph, node: str, op: str, kind: str, label: str | None = None, *, decision: str | None = None,
          shape: Shape | None = None, group: str | None = None, **extra: Any) -> str:
    g.add_node(node, op=op, kind=kind, label=label or op, decision=decision, shape=shape, group=group, **extra)
    return node


def _out(shapes: Mapping[str, tuple[Shape, Shape]], name: str) -> Shape | None:
    return shapes[name][1] if name in shapes else None


def _in(shapes: Mapping[str, tuple[Shape, Shape]], name: str) -> Shape | None:
    return shapes[name][0] if name in shapes else None


def _ends(g: nx.DiGraph, shapes: Mapping[str, tuple[Shape, Shape]], group: str | None = None) -> tuple[str, str]:
    net = shapes.get("network")
    first = _node(g, "input", "input", "input", shape=net[0] if net else None, group=group)
    stem = _node(g, "stem", "stem", "stem", shape=_out(shapes, "stem"), group=group)
    g.add_edge(first, stem)
    return first, stem


def _head(g: nx.DiGraph, shapes: Mapping[str, tuple[Shape, Shape]], label: str = "pool + linear",
          group: str | None = None) -> str:
    net = shapes.get("network")
    return _node(g, "head", "head", "head", label, shape=net[1] if net else None, group=group)


# -- cell spaces ----------------------------------------------------------------------------------
def _darts_cells(arch: Mapping[str, Any], space: Any, shapes: Mapping[str, tuple[Shape, Shape]]) -> nx.DiGraph:
    """One DAG per cell type: inputs c_{k-2}, c_{k-1} -> op nodes -> intermediate states -> concat."""
    g = nx.DiGraph(layout="cells")
    cells: dict[str, int] = {}
    for name in arch:
        m = _CELL.match(name)
        if m:
            cells[m.group(1)] = max(cells.get(m.group(1), 0), int(m.group(2)) + 1)
    g.graph["cells"] = list(cells)
    for t, nodes in cells.items():
        concat = getattr(space, "concat", {}).get(t) if space is not None else None
        concat = list(concat) if concat else list(range(2, 2 + nodes))
        states = [_node(g, f"{t}/c_k-2", "input", "input", "c_{k-2}", group=t),
                  _node(g, f"{t}/c_k-1", "input", "input", "c_{k-1}", group=t)]
        for k in range(nodes):
            state = f"{t}/{k}"
            for j in (0, 1):
                decision = f"{t}.n{k}.op{j}"
                op, source = str(arch[decision]), int(arch[f"{t}.n{k}.in{j}"])
                node = _node(g, f"{t}/{k}.op{j}", op, "op", decision=decision, shape=_out(shapes, decision),
                             group=t, dead=op in ("none", "zero"))
                if source < len(states):
                    g.add_edge(states[source], node)
                    if g.nodes[states[source]]["shape"] is None:
                        g.nodes[states[source]]["shape"] = _in(shapes, decision)
                g.add_edge(node, state)
            _node(g, state, "add", "state", str(k), shape=_out(shapes, f"{t}.n{k}.op0"), group=t)
            states.append(state)
        for unread in states[:2]:  # a cell input no node reads is not even computed (DARTS' Cell)
            g.nodes[unread]["dead"] = g.out_degree(unread) == 0
        out = _node(g, f"{t}/c_k", "concat", "output", "c_{k}", group=t)
        channels = [g.nodes[states[i]]["shape"] for i in concat if i < len(states)]
        if channels and all(channels):
            g.nodes[out]["shape"] = (sum(s[0] for s in channels), *channels[0][1:])
        for i in concat:
            if i < len(states):
                g.add_edge(states[i], out)
    return g


def _nb201_cell(arch: Mapping[str, Any], shapes: Mapping[str, tuple[Shape, Shape]]) -> nx.DiGraph:
    """NB201's 4-node cell: node i = sum over j < i of op(j -> i); node 0 is the input, node 3 the output."""
    g = nx.DiGraph(layout="cells", cells=["cell"])
    edges = sorted((int(m.group(1)), int(m.group(2)), n) for n in arch if (m := _NB201.match(n)))
    last = max(i for i, _, _ in edges)
    for i in range(last + 1):
        kind = "input" if i == 0 else "output" if i == last else "state"
        _node(g, f"cell/{i}", "input" if i == 0 else "add", kind, str(i), group="cell")
    for i, j, name in edges:
        op = str(arch[name])
        node = _node(g, f"cell/{name}", op, "op", decision=name, shape=_out(shapes, name), group="cell",
                     dead=op == "none")
        g.add_edge(f"cell/{j}", node)
        g.add_edge(node, f"cell/{i}")
        for state, shape in ((f"cell/{j}", _in(shapes, name)), (f"cell/{i}", _out(shapes, name))):
            if g.nodes[state]["shape"] is None:
                g.nodes[state]["shape"] = shape
    return g


# -- chains ---------------------------------------------------------------------------------------
def _nano_chain(arch: Mapping[str, Any], shapes: Mapping[str, tuple[Shape, Shape]]) -> nx.DiGraph:
    """stem -> pos0 -> pos1 -> ...; the head reads the sum of the stem and every position's output."""
    g = nx.DiGraph(layout="chain")
    _, prev = _ends(g, shapes)
    total = _node(g, "sum", "add", "state", "sum", shape=_out(shapes, "stem"))
    g.add_edge(prev, total)
    positions = sorted((int(n[3:].split(".")[0]), n) for n in arch if re.match(r"^pos\d+\.op$", n))
    for _, name in positions:
        op = str(arch[name])
        node = _node(g, name, op, "op", decision=name, shape=_out(shapes, name), dead=op in ("zero", "none"))
        g.add_edge(prev, node)
        g.add_edge(node, total)
        prev = node
    g.add_edge(total, _head(g, shapes))
    return g


def _mobile_chain(arch: Mapping[str, Any], shapes: Mapping[str, tuple[Shape, Shape]]) -> nx.DiGraph:
    """stem -> MBConv blocks (kernel, expansion, stride; residual where shapes match) by stage -> head."""
    g = nx.DiGraph(layout="chain", width=arch.get("width"))
    _, prev = _ends(g, shapes)
    s = 1
    while f"stage{s}.depth" in arch:
        for b in range(int(arch[f"stage{s}.depth"])):
            name = f"stage{s}.block{b}"
            k, e = arch.get(f"{name}.kernel"), arch.get(f"{name}.expand")
            shape_in, shape_out = _in(shapes, name), _out(shapes, name)
            stride = round(shape_in[-1] / shape_out[-1]) if shape_in and shape_out and shape_out[-1] else None
            residual = shape_in is not None and shape_in == shape_out
            label = f"MBConv k{k} e{e}" + (f" /{stride}" if stride and stride > 1 else "")
            node = _node(g, name, f"mbconv_k{k}_e{e}", "op", label, decision=f"{name}.kernel", shape=shape_out,
                         group=f"stage{s}", kernel=k, expand=e, stride=stride, residual=residual)
            g.add_edge(prev, node)
            prev = node
        s += 1
    g.add_edge(prev, _head(g, shapes))
    return g


def _layers_chain(arch: Mapping[str, Any], shapes: Mapping[str, tuple[Shape, Shape]]) -> nx.DiGraph:
    """The layer genome in order; a conv layer with a skip adds its input back (an `add` node)."""
    g = nx.DiGraph(layout="chain")
    net = shapes.get("network")
    prev = _node(g, "input", "input", "input", shape=net[0] if net else None)
    for i in range(int(arch["n_layers"])):
        kind, name = arch[f"layer{i}.type"], f"layer{i}"
        if kind == "conv":
            k, f = arch[f"{name}.kernel"], arch[f"{name}.filters"]
            op, label = f"conv{k}x{k}", f"conv {k}x{k}, {f}"
        elif kind == "dropout":
            op, label = "dropout", f"dropout {float(arch[f'{name}.rate']):g}"
        else:
            op = label = {"maxpool": "maxpool3x3", "avgpool": "avgpool3x3"}.get(kind, kind)
        node = _node(g, name, op, "op", label, decision=f"{name}.type", shape=_out(shapes, name))
        g.add_edge(prev, node)
        if kind == "conv" and arch.get(f"{name}.skip"):
            add = _node(g, f"{name}.add", "add", "state", "+", shape=_out(shapes, name))
            g.add_edge(node, add)
            g.add_edge(prev, add, skip=True)
            node = add
        prev = node
    units = int(arch.get("dense.units", 0) or 0)
    if units:
        dense = _node(g, "dense", "linear", "op", f"pool + dense {units}", decision="dense.units", shape=(units,))
        g.add_edge(prev, dense)
        prev = dense
    g.add_edge(prev, _head(g, shapes, "linear" if units else "pool + linear"))
    return g


def _generic_chain(arch: Mapping[str, Any], shapes: Mapping[str, tuple[Shape, Shape]]) -> nx.DiGraph:
    """Any other space: its decisions in order, one node each (`name = value`)."""
    g = nx.DiGraph(layout="chain")
    net = shapes.get("network")
    prev = _node(g, "input", "input", "input", shape=net[0] if net else None)
    for name, value in arch.items():
        node = _node(g, name, str(value), "op", f"{name} = {value}", decision=name, shape=_out(shapes, name))
        g.add_edge(prev, node)
        prev = node
    g.add_edge(prev, _head(g, shapes, "output"))
    return g
