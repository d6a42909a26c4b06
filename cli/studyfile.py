"""Study files: a Python or YAML file run into a `StudySpec`, and `--set KEY=VALUE` overrides applied to it.

Shared by `nasopt run` and the commands that take `--study-file` (export, train, latency-table).
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasopt.errors import UserError
from nasopt.search_spaces import make_space

__all__ = ["load_study_file", "apply_sets"]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def load_study_file(path: str) -> Any:
    """Execute a study file and return its `study` (a StudySpec); every failure is one UserError."""
    from nasopt.study._spec import StudySpec

    file = Path(path)
    if not file.is_file():
        raise UserError(f"study file {path} not found; give the path of a .py file that defines `study = "
                        "nasopt.StudySpec(...)` (examples in studies/)")
    # the study file's folder is importable, as a script's is: its own modules (`from mydata import ...`) and
    # the 'module:function' names of its data, loss, metrics and train_fn are found beside it
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if file.suffix.lower() in (".yaml", ".yml"):  # the same fields as StudySpec, names for objects
        from nasopt.cli.yamlstudy import load_yaml_study

        return load_yaml_study(str(file))
    try:
        namespace = runpy.run_path(str(file), run_name="__nasopt_study__")
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: syntax error: {e.msg}; fix the study file") from None
    except Exception as e:  # the file is user code: any error it raises is the user's to fix
        raise UserError(f"{path}: {type(e).__name__}: {e}") from None
    spec = namespace.get("study")
    if spec is None:
        raise UserError(f"{path} defines no `study`; add `study = nasopt.StudySpec(name=..., space=...)`")
    if isinstance(spec, dict):
        spec = _from_dict(spec)
    if not isinstance(spec, StudySpec):
        raise UserError(f"{path}: `study` must be a nasopt.StudySpec, but got {type(spec).__name__}")
    return spec


def _from_dict(values: dict[str, Any]) -> Any:
    from nasopt.study._spec import StudySpec

    values = dict(values)
    if isinstance(values.get("space"), str):
        values["space"] = make_space(values["space"])
    try:
        return StudySpec(**values)
    except TypeError as e:
        raise UserError(f"bad study: {e}") from None


def _parse(key: str, raw: str, current: Any, kind: Any) -> Any:
    text = str(kind)
    if raw.lower() in ("none", "null") and "None" in text:
        return None
    try:
        if isinstance(current, bool) or text.startswith("bool"):
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError
            return raw.lower() in _TRUE
        if isinstance(current, int) or text.startswith("int"):
            return int(raw)
        if isinstance(current, float) or text.startswith("float"):
            return float(raw)
    except ValueError:
        want = "true/false" if "bool" in text or isinstance(current, bool) else text.split(" |")[0]
        raise UserError(f"--set {key}={raw}: expected {want}, got {raw!r}") from None
    return raw


def apply_sets(spec: Any, sets: Sequence[str]) -> Any:
    """Apply `--set key=value` overrides (`train.epochs=3`, `sampler=tpe`, `space=nano`, ...)."""
    from nasopt.oneshot import make_strategy, strategy_classes
    from nasopt.pruners import make_pruner
    from nasopt.samplers import make_sampler

    nested = {"train": spec.train, "measure": spec.measure}
    scalar = [f.name for f in dataclasses.fields(spec) if f.name not in ("objectives", "constraints", "allow_changed")
              and f.name not in nested]
    known = scalar + [f"{n}.{f.name}" for n, obj in nested.items() for f in dataclasses.fields(obj)]
    known += list(dict.fromkeys(f"strategy.{f.name}" for cls in strategy_classes() for f in dataclasses.fields(cls)))
    top: dict[str, Any] = {}
    changes: dict[str, dict[str, Any]] = {}
    samplers = []
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep and key in known:
            raise UserError(f"--set {key} has no value; write --set {key}=VALUE")
        if not sep or key not in known:
            raise UserError(f"unknown --set key {key!r}; known keys: {', '.join(known)}")
        if key.startswith("strategy."):  # applies to every gradient method of the study file
            name = key.split(".", 1)[1]
            strategies = top.get("strategy", spec.strategy)
            if strategies is None:
                raise UserError(f"--set {key} needs a study with a `strategy` (or --set strategy=darts first)")
            many = isinstance(strategies, (list, tuple))
            changed = []
            for st in strategies if many else [strategies]:
                fields = {f.name: f for f in dataclasses.fields(st)}
                if name not in fields:
                    raise UserError(f"--set {key}: {type(st).__name__} has no field {name!r}; its fields: "
                                    f"{', '.join(fields)}")
                changed.append(dataclasses.replace(st, **{name: _parse(key, raw, getattr(st, name), fields[name].type)}))
            top["strategy"] = changed if many else changed[0]
        elif key == "strategy":
            top["strategy"] = make_strategy(raw)
            top["sampler"] = None
        elif "." in key:
            group, name = key.split(".", 1)
            field = {f.name: f for f in dataclasses.fields(nested[group])}[name]
            value = _parse(key, raw, getattr(nested[group], name), field.type)
            changes.setdefault(group, {})[name] = value  # applied together: rules between fields hold at the end
        elif key == "space":
            top["space"] = make_space(raw)
        elif key == "pruner":
            top["pruner"] = make_pruner(raw, max_epochs=spec.train.epochs)
        elif key == "sampler":
            samplers.append(raw)  # built last: it may need the (overridden) space and seed
        else:
            field = {f.name: f for f in dataclasses.fields(spec)}[key]
            top[key] = _parse(key, raw, getattr(spec, key), field.type)
    for group, values in changes.items():
        nested[group] = dataclasses.replace(nested[group], **values)
    spec = dataclasses.replace(spec, **top, **nested)
    for name in samplers:
        sampler = make_sampler(name, seed=spec.seed, n_objectives=len(spec.objectives), space=spec.space)
        spec = dataclasses.replace(spec, sampler=sampler, strategy=None)
    return spec
