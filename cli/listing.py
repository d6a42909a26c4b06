"""`nasopt list KIND`: the names a study file, `--set` or `--sampler/--pruner` accept, one line each.

The names come from the registries beside the code they name (`nasopt.search_spaces.SPACES`,
`nasopt.samplers.SAMPLER_CLASSES`, `nasopt.pruners.PRUNERS`, `nasopt.oneshot.STRATEGIES`,
`nasopt.data.DATASETS`, `nasopt.study.METRICS`). A "module:Class" entry is described by the first sentence
of its docstring, read from the source with `ast`: listing the spaces imports no network code (no torch),
and listing the samplers imports neither botorch nor its sampler. The dataset and metric tables are
literals in modules that import torch: they are read from the source too (imported only where a table
stops being a literal).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasopt.errors import UserError

__all__ = ["KINDS", "add_parser", "cmd_list", "listing"]

WIDTH = 110  # a description's longest line
EXAMPLES = """\
examples:
  nasopt list spaces                 # the search spaces: --set space=... or search_spaces.<name>
  nasopt list samplers               # nasopt run FILE --sampler NAME
  nasopt list metrics                # objectives={...} and constraints={...} of a StudySpec
"""


def _sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line of at most WIDTH characters."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    if ". " in paragraph:
        paragraph = paragraph[: paragraph.index(". ") + 1]
    return paragraph if len(paragraph) <= WIDTH else paragraph[: WIDTH - 3].rsplit(" ", 1)[0] + " ..."


def _source(module: str) -> ast.Module | None:
    """The parsed source of `module`, found without running it (only its parent packages are imported)."""
    try:
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
        return ast.parse(Path(origin).read_text(encoding="utf-8")) if origin and origin.endswith(".py") else None
    except (ImportError, OSError, SyntaxError, ValueError):
        return None


def describe(path: str, depth: int = 0) -> str:
    """The first sentence of the docstring of `path` ("module:Class"), read from the source without importing
    the module; a class re-exported by `from X import Class` is followed to X."""
    module, _, name = path.partition(":")
    tree = _source(module)
    if tree is None:
        return ""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return _sentence(ast.get_docstring(node))
    for found in ast.walk(tree):  # a re-export: `from package._private import Class`
        if isinstance(found, ast.ImportFrom) and found.module and depth < 3 and not found.level \
                and any(a.name == name and a.asname in (None, name) for a in found.names):
            return describe(f"{found.module}:{name}", depth + 1)
    return ""


def _literal(module: str, name: str) -> Any:
    """The value of `name = <literal>` at the top of `module`, read without running it or its package's
    `__init__` (which imports torch); None when not one."""
    package, _, leaf = module.rpartition(".")
    try:
        spec = importlib.util.find_spec(package)
        folder = list(spec.submodule_search_locations or []) if spec is not None else []
        tree = ast.parse(Path(folder[0], f"{leaf}.py").read_text(encoding="utf-8")) if folder else None
    except (ImportError, OSError, SyntaxError, ValueError):
        tree = None
    for node in tree.body if tree is not None else []:
        target = node.target if isinstance(node, ast.AnnAssign) else \
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


def _spaces() -> list[tuple[str, str]]:
    from nasopt.search_spaces import SPACES

    out = []
    for name, path in SPACES.items():
        tree = _source(path.split(":")[0])
        doc = ast.get_docstring(tree) if tree is not None else None
        out.append((name, _sentence(doc) or describe(path)))  # the module's docstring names the space
    return out


def _samplers() -> list[tuple[str, str]]:
    from nasopt.samplers import SAMPLER_CLASSES

    return [(name, describe(path)) for name, path in SAMPLER_CLASSES.items()]


def _pruners() -> list[tuple[str, str]]:
    from nasopt.pruners import PRUNERS

    return [(name, "no pruning: every trial trains all its epochs" if cls is None
             else _sentence(cls.__doc__)) for name, cls in PRUNERS.items()]


def _strategies() -> list[tuple[str, str]]:
    from nasopt.oneshot import STRATEGIES

    out = []
    for name, (path, settings) in STRATEGIES.items():
        cls = path.split(":")[1]
        args = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        out.append((name, f"{cls}({args}): {describe(path)}"))
    return out


def _datasets() -> list[tuple[str, str]]:
    names, notes = _literal("nasopt.data._tasks", "DATASETS"), _literal("nasopt.data._tasks", "DATASET_NOTES")
    if not isinstance(names, tuple) or not isinstance(notes, dict):
        from nasopt.data import DATASET_NOTES, DATASETS

        names, notes = DATASETS, DATASET_NOTES
    return [(name, notes.get(name, "")) for name in names]


def _metrics() -> list[tuple[str, str]]:
    measured, suffix = _literal("nasopt.study._spec", "MEASURED"), _literal("nasopt.study._spec", "PROXY_LIMIT")
    proxies = _literal("nasopt.measure._proxies", "PROXIES")
    if isinstance(measured, dict) and isinstance(suffix, str) and isinstance(proxies, dict):
        metrics = {**measured, **{name: (what + suffix, True) for name, what in proxies.items()}}
    else:  # not literals (an edited install): the real table, at the cost of importing torch
        from nasopt.study import METRICS

        metrics = METRICS
    return [(name, what) for name, (what, _) in metrics.items()]


KINDS: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "spaces": _spaces, "samplers": _samplers, "pruners": _pruners, "strategies": _strategies,
    "datasets": _datasets, "metrics": _metrics,
}


def listing(kind: str) -> list[tuple[str, str]]:
    """(name, one-line description) for every name of `kind` (a key of KINDS)."""
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}; nasopt list takes one of: {', '.join(KINDS)}")
    return KINDS[kind]()


def cmd_list(args: argparse.Namespace) -> int:
    rows = listing(args.kind)
    width = max(len(name) for name, _ in rows)
    for name, what in rows:
        print(f"{name:<{width}}  {what}".rstrip())
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("list", help="the names you can choose from: spaces, samplers, pruners, strategies, "
                                    "datasets, metrics", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", metavar="KIND", help=f"what to list: {', '.join(KINDS)}")
    p.set_defaults(func=cmd_list)
