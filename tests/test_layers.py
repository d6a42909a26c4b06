"""The house keeps its layers: no import cycle in nasopt (imports inside functions included), the engine
and the spaces never import the CLI, no module imports another module's private name, and the wheel's
package list is exactly the folders that hold an `__init__.py`; only the fenced fast path imports Optuna's
private storage modules, and no module is over 400 lines.

Read from the source with `ast`, so a cycle closed by an import inside a function counts like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# where each installed package's files live in the repository
FOLDERS = {"nasopt": ROOT / "nasopt", "nasopt.search_spaces": ROOT / "search_spaces", "nasopt.cli": ROOT / "cli"}


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    out: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "nasopt" and parts and parts[0] in ("search_spaces", "cli"):
                continue
            out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a module or a module.attribute) lies in."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, known)
                if target:
                    found.append((target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if _resolve(base, known) is None:
                continue
            in_type_checking = False
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # `from nasopt import study`: the module itself
                    found.append((sub, None, node.lineno))
                else:
                    found.append((_resolve(base, known), alias.name, node.lineno))  # type: ignore[arg-type]
            del in_type_checking
    return found


def _type_checking_lines(path: Path) -> set[int]:
    """Lines inside `if TYPE_CHECKING:` blocks (imports for annotations only: no run-time edge)."""
    tree = ast.parse(path.read_text())
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        skip = _type_checking_lines(path)
        for target, _, line in imports(module, path, known):
            if line not in skip and target != module:
                edges[module].add(target)
    return edges


def _package_chain(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan). Importing a submodule runs its
    packages' `__init__` first, but a package re-exporting its own submodules is no cycle: the edge from a
    module to a package it lies in is left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w in _package_chain(v):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in edges:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_no_import_cycle_in_nasopt():
    found = cycles(graph())
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_engine_and_the_spaces_never_import_the_cli():
    edges = graph()
    bad = [(m, t) for m, targets in edges.items() if not m.startswith("nasopt.cli")
           for t in targets if t.startswith("nasopt.cli")]
    assert not bad, bad


def test_no_module_imports_another_modules_private_name():
    known = modules()
    bad = []
    for module, path in known.items():
        for target, name, line in imports(module, path, known):
            if name is not None and name.startswith("_") and not name.startswith("__") and target != module:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {target}.{name}")
        bad += _private_attributes(module, path, known)
    assert not bad, "\n".join(bad)


def _private_attributes(module: str, path: Path, known: dict[str, Path]) -> list[str]:
    """`other_module._name` where `other_module` was imported as a module (`from nasopt.study import _objective`)."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known and alias.asname:
                    aliases[alias.asname] = alias.name
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
            and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != module]


def test_the_wheel_lists_every_folder_with_an_init():
    import runpy
    from unittest import mock

    captured: dict[str, object] = {}
    with mock.patch("setuptools.setup", lambda **kw: captured.update(kw)):
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    packages = set(captured["packages"])  # type: ignore[arg-type]
    folders = set()
    for package, folder in FOLDERS.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            if package == "nasopt" and rel and rel[0] in ("search_spaces", "cli"):
                continue
            folders.add(".".join([package, *rel]))
    assert packages == folders


def _optuna_private_imports(path: Path) -> list[str]:
    """Imports of Optuna's private storage modules or names (`optuna.storages._rdb`, `from optuna.storages
    import _x`): the storage format the fast path writes, which only the fenced path may rely on."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["optuna", "storages"] and any(p.startswith("_") and not p.startswith("__") for p in parts):
                out.append(f"{node.lineno}: {name}")
                break
    return out


def test_only_the_fenced_fast_path_imports_optunas_private_modules():
    bad = [f"{path.relative_to(ROOT)}:{hit}" for module, path in modules().items()
           if not module.startswith("nasopt.storage._fast") for hit in _optuna_private_imports(path)]
    assert not bad, "\n".join(bad)


def test_the_optuna_formats_nasopt_relies_on_match_the_installed_optuna():
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX

    from nasopt.keys import OPTUNA_ARTIFACT_PREFIX

    assert OPTUNA_ARTIFACT_PREFIX == ARTIFACTS_ATTR_PREFIX


def test_no_module_is_over_400_lines():
    long = {str(path.relative_to(ROOT)): n for path in modules().values()
            if (n := len(path.read_text().splitlines())) > 400}
    assert not long, f"split these by job (docs/ARCHITECTURE.md): {long}"
