"""YAML study files: the fields of `StudySpec`, with the space, sampler, strategy and pruner by name.

    name: mobile_yaml
    space: {name: mobile, stages: 2, max_depth: 2}     # or just `space: mobile` (default settings)
    dataset: digits
    objectives: {accuracy: maximize, params: minimize}
    constraints: {params: 50000}
    sampler: nsga2                                     # or {name: nsga2, population_size: 8}
    train: {epochs: 3, batch_size: 128, lr: 0.05}
    measure: {repeats: 10}

A name alone gives nasopt's default for that name (`make_sampler`, `make_strategy`, `make_pruner`); a
mapping with arguments constructs the named class with exactly those arguments (plus the study's
`seed` and `space` where the class takes them). Every unknown key is an error that lists the known ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any

from nasopt.errors import UserError

__all__ = ["load_yaml_study"]

def _class(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _named(where: str, value: Any) -> tuple[str, dict[str, Any]]:
    """`name` or `{name: NAME, arg: value, ...}` -> (NAME, args)."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        args = dict(value)
        return args.pop("name"), args
    raise UserError(f"`{where}` must be a name or a mapping with `name:` and arguments, but got {value!r}")


def _parameters(cls: Any) -> list[str]:
    return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]


def _construct(where: str, cls: Any, args: dict[str, Any]) -> Any:
    known = _parameters(cls)
    unknown = [k for k in args if k not in known]
    if unknown:
        raise UserError(f"unknown key {where}.{unknown[0]}; {cls.__name__} takes: {', '.join(known)}")
    try:
        return cls(**args)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {cls.__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())}): {e}") from None


def _space(value: Any) -> Any:
    from nasopt.search_spaces import SPACES, make_space

    name, args = _named("space", value)
    if name not in SPACES:
        raise UserError(f"unknown space {name!r}; known spaces: {', '.join(SPACES)}")
    return make_space(name) if not args else _construct(f"space({name})", _class(SPACES[name]), args)


def _sampler(value: Any, seed: int, n_objectives: int, space: Any) -> Any:
    from nasopt.samplers import make_sampler, sampler_class

    name, args = _named("sampler", value)
    if not args:
        return make_sampler(name, seed=seed, n_objectives=n_objectives, space=space)
    cls = sampler_class(name)
    known = _parameters(cls)
    args = {**({"seed": seed} if "seed" in known else {}), **({"space": space} if "space" in known else {}), **args}
    return _construct(f"sampler({name})", cls, args)


def _strategy(value: Any) -> Any:
    from nasopt.oneshot import make_strategy

    if isinstance(value, list):
        return [_strategy(v) for v in value]
    name, args = _named("strategy", value)
    strategy = make_strategy(name)
    fields = [f.name for f in dataclasses.fields(strategy)]
    unknown = [k for k in args if k not in fields]
    if unknown:
        raise UserError(f"unknown key strategy({name}).{unknown[0]}; {type(strategy).__name__} takes: {', '.join(fields)}")
    try:
        return dataclasses.replace(strategy, **args)
    except (TypeError, ValueError) as e:
        raise UserError(f"strategy({name}): {e}") from None


def _pruner(value: Any, max_epochs: int) -> Any:
    from nasopt.pruners import PRUNERS, make_pruner

    name, args = _named("pruner", value)
    if name not in PRUNERS:
        raise UserError(f"unknown pruner {name!r}; known pruners: {', '.join(PRUNERS)}")
    if not args or PRUNERS[name] is None:
        return make_pruner(name, max_epochs=max_epochs)
    return _construct(f"pruner({name})", PRUNERS[name], args)


def _config(where: str, cls: Any, value: Any) -> Any:
    if not isinstance(value, dict):
        raise UserError(f"`{where}` must be a mapping of {cls.__name__} fields, but got {value!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise UserError(f"unknown key {where}.{unknown[0]}; known keys of {where}: {', '.join(fields)}")
    return _construct(where, cls, value)


def load_yaml_study(path: str) -> Any:
    """A StudySpec from a YAML study file; every mistake is one UserError naming the key."""
    import yaml

    from nasopt.measure._metrics import MeasureConfig
    from nasopt.study._spec import StudySpec
    from nasopt.train import TrainConfig

    try:
        values = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e}); fix the study file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read study file {path}: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a YAML study is a mapping of StudySpec fields (name:, space:, ...), "
                        f"but got {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(StudySpec)]
    unknown = [k for k in values if k not in known]
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    for key in ("name", "space"):
        if key not in values:
            raise UserError(f"{path}: a study needs `{key}:`")
    try:
        values["space"] = _space(values["space"])
        if "train" in values:
            values["train"] = _config("train", TrainConfig, values["train"])
        if "measure" in values:
            values["measure"] = _config("measure", MeasureConfig, values["measure"])
        for key in ("objectives", "constraints"):
            if key in values and not isinstance(values[key], dict):
                raise UserError(f"`{key}` must be a mapping of metric: value, but got {values[key]!r}")
        if values.get("strategy") is not None:
            values["strategy"] = _strategy(values["strategy"])
        if values.get("pruner") is not None:
            epochs = values["train"].epochs if "train" in values else TrainConfig().epochs
            values["pruner"] = _pruner(values["pruner"], epochs)
        if values.get("sampler") is not None:
            objectives = values.get("objectives") or {"accuracy": "maximize"}
            values["sampler"] = _sampler(values["sampler"], int(values.get("seed", 0)), len(objectives), values["space"])
        return StudySpec(**values)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: {e}") from None
