"""The `nasopt` command: a thin argparse front over library functions.

Every user mistake is a `UserError`: one line on stderr, exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import runpy
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasopt.errors import Terminated, UserError

# The one place that lists the spaces by name (the engine never imports search_spaces).
SPACES = {
    "nano": "nasopt.search_spaces.nano:NanoSpace",
    "mobile": "nasopt.search_spaces.mobile:MobileSpace",
    "layers": "nasopt.search_spaces.layers:LayersSpace",
    "nb201": "nasopt.search_spaces.nb201:NB201Space",
    "darts_cell": "nasopt.search_spaces.darts_cell:DartsCellSpace",
    "conv1d": "nasopt.search_spaces.conv1d:Conv1dSpace",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def make_space(name: str) -> Any:
    """The space called `name` with its default settings."""
    import importlib

    if name not in SPACES:
        raise UserError(f"unknown space {name!r}; known spaces: {', '.join(SPACES)}")
    module, cls = SPACES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def load_study_file(path: str) -> Any:
    """Execute a study file and return its `study` (a StudySpec); every failure is one UserError."""
    from nasopt.study import StudySpec

    file = Path(path)
    if not file.is_file():
        raise UserError(f"study file {path} not found; give the path of a .py file that defines `study = "
                        "nasopt.StudySpec(...)` (examples in studies/)")
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
    from nasopt.study import StudySpec

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
    from nasopt.pruners import make_pruner
    from nasopt.samplers import make_sampler

    nested = {"train": spec.train, "measure": spec.measure}
    scalar = [f.name for f in dataclasses.fields(spec) if f.name not in ("objectives", "constraints", "allow_changed")
              and f.name not in nested]
    known = scalar + [f"{n}.{f.name}" for n, obj in nested.items() for f in dataclasses.fields(obj)]
    known += list(dict.fromkeys(f"strategy.{f.name}" for cls in _strategy_classes() for f in dataclasses.fields(cls)))
    top: dict[str, Any] = {}
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
            nested[group] = dataclasses.replace(nested[group], **{name: value})
        elif key == "space":
            top["space"] = make_space(raw)
        elif key == "pruner":
            top["pruner"] = make_pruner(raw, max_epochs=spec.train.epochs)
        elif key == "sampler":
            samplers.append(raw)  # built last: it may need the (overridden) space and seed
        else:
            field = {f.name: f for f in dataclasses.fields(spec)}[key]
            top[key] = _parse(key, raw, getattr(spec, key), field.type)
    spec = dataclasses.replace(spec, **top, **nested)
    for name in samplers:
        sampler = make_sampler(name, seed=spec.seed, n_objectives=len(spec.objectives), space=spec.space)
        spec = dataclasses.replace(spec, sampler=sampler, strategy=None)
    return spec


# gradient methods by name (`--set strategy=NAME`): "module:Class" and the settings that make the variant
STRATEGIES: dict[str, tuple[str, dict[str, Any]]] = {
    "darts": ("nasopt.oneshot.darts:DARTS", {}),
    "darts_2nd": ("nasopt.oneshot.darts:DARTS", {"unrolled": True}),
    "pc_darts": ("nasopt.oneshot.darts:DARTS", {"partial_channels": 4}),
    "proxyless": ("nasopt.oneshot.proxyless:ProxylessNAS", {}),
    "enas": ("nasopt.oneshot.enas:ENAS", {}),
}


def _strategy_classes() -> list[Any]:
    import importlib

    paths = dict.fromkeys(path for path, _ in STRATEGIES.values())
    return [getattr(importlib.import_module(p.split(":")[0]), p.split(":")[1]) for p in paths]


def make_strategy(name: str) -> Any:
    """A gradient method by name with its default settings (`--set strategy=NAME`)."""
    import importlib

    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; gradient methods: {', '.join(STRATEGIES)} "
                        "(samplers go in --sampler)")
    path, kwargs = STRATEGIES[name]
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


def cmd_run(args: argparse.Namespace) -> int:
    import nasopt
    from nasopt.storage import DEFAULT_STORAGE, mask_url
    from nasopt.study import finished_count

    sets = list(args.set or [])
    sets += [f"sampler={args.sampler}"] if args.sampler else []
    sets += [f"pruner={args.pruner}"] if args.pruner else []
    spec = apply_sets(load_study_file(args.file), sets)
    try:
        study = nasopt.run(spec, storage=args.storage, n_trials=args.n_trials, timeout=args.timeout,
                           device=args.device, progress=not args.quiet, workers=args.workers,
                           trial_timeout=args.trial_timeout, allow_changed=args.allow_changed or ())
    except Terminated:  # an interruption never uses up a trial's retries: a running trial is always queued again
        print("\nterminated (SIGTERM): a running trial was failed and queued to be retried; run the same "
              "command to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("\ninterrupted: a running trial was failed and queued to be retried; run the same command to "
              "resume", file=sys.stderr)
        return 130
    where = f"(storage {mask_url(args.storage or spec.storage or DEFAULT_STORAGE)})"
    if spec.strategy is not None:
        from nasopt.oneshot._trial import STRATEGY_KEY

        gradient = [t for t in study.get_trials(deepcopy=False) if STRATEGY_KEY in t.system_attrs and t.state.is_finished()]
        print(f"study {spec.name!r}: {len(gradient)} gradient trial(s) finished, "
              f"{finished_count(study)} sampled {where}")
    else:
        print(f"study {spec.name!r}: {finished_count(study)} trials finished {where}")
    print(_table(study, top=5))
    return 0


def _table(study: Any, top: int) -> str:
    import pandas as pd

    from nasopt.results import pareto_front, trials_frame

    multi = len(study.directions) > 1
    frame = pareto_front(study=study) if multi else trials_frame(study=study)
    if not multi and not frame.empty:
        frame = frame[frame["state"] == "COMPLETE"]
        frame = frame.sort_values(frame.columns[2], ascending=study.direction.name == "MINIMIZE").head(top)
    if frame.empty:
        return "no finished trials yet"
    columns = ["number", *study.metric_names, "params", "macs", "latency_ms", "strategy", "arch"]
    columns = list(dict.fromkeys(c for c in columns if c in frame.columns))
    title = "Pareto set" if multi else f"top {top} trials"
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        return f"{title}:\n" + frame[columns].to_string(index=False)


def cmd_ls(args: argparse.Namespace) -> int:
    import optuna

    from nasopt.storage import open_storage

    storage = open_storage(args.storage, create=False, heartbeat=False)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    if not summaries:
        print("no studies")
    for s in summaries:
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        states: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            states[t.state.name] = states.get(t.state.name, 0) + 1
        objectives = ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(
            study.metric_names or [f"value{i}" for i in range(len(study.directions))], study.directions, strict=False))
        counts = " ".join(f"{k.lower()}={v}" for k, v in sorted(states.items()))
        print(f"{s.study_name}\t{counts or 'no trials'}\t{objectives}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from nasopt.results import load_study

    study = load_study(args.study, args.storage)
    print(_table(study, top=args.top))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from nasopt.storage import open_storage

    storage = open_storage(args.storage, create=False, heartbeat=False)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving the dashboard on {args.host}: anyone who can reach this address can read "
              "(and annotate) the studies; put it behind an authenticating proxy", file=sys.stderr)
    with warnings.catch_warnings():  # it imports botorch when installed: torch.jit FutureWarnings
        warnings.simplefilter("ignore", FutureWarning)
        from optuna_dashboard import run_server

    from nasopt.dashboard import FeasibilityView, artifact_folder

    store = artifact_folder(args.storage, args.artifacts)  # trial pictures and kept weights, if the study has any
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    try:
        run_server(FeasibilityView(storage), host=args.host, port=args.port, artifact_store=store)
    except KeyboardInterrupt:
        pass
    except OSError as e:
        raise UserError(f"cannot serve on {args.host}:{args.port}: {e.strerror}; choose another --port") from None
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    import pandas as pd

    from nasopt.cli.api import benchmark

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.runs < 1 or args.trials < 1:
        raise UserError(f"`--runs >= 1` and `--trials >= 1` must hold, but got {args.runs=}, {args.trials=}")
    try:
        frame = benchmark(strategies, num_runs=args.runs, space=args.space, dataset=args.dataset,
                          n_trials=args.trials, epochs=args.epochs, progress=False)
    except NotImplementedError as e:
        raise UserError(str(e)) from None
    table = pd.DataFrame({
        "strategy": frame["strategy"],
        "best val acc": [f"{m:.4f} ± {s:.4f}" for m, s in zip(frame["best_val"], frame["best_val_std"], strict=True)],
        "seed-mean val acc of best": frame["best_true"].map(lambda v: f"{v:.4f}"),
        "test acc of best": frame["best_test"].map(lambda v: f"{v:.4f}"),
        "trials to optimum (median)": [f">{args.trials}" if t > args.trials else f"{t:g}" for t in frame["trials_to_opt"]],
        "optimum found": frame["found_opt"],
        "s/run": frame["seconds"].map(lambda v: f"{v:.1f}"),
    })
    print(f"{args.space} on {args.dataset}: {args.runs} runs x {args.trials} trials per strategy")
    print(table.to_markdown(index=False) if args.markdown else table.to_string(index=False))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nasopt", description="Neural Architecture Search on Optuna.")
    sub = p.add_subparsers(dest="command", required=True)
    storage_help = "storage URL (default sqlite:///nasopt.db in the working directory)"

    r = sub.add_parser("run", help="run or resume the study defined in a study file")
    r.add_argument("file", help="a .py study file defining `study = nasopt.StudySpec(...)`, or a .yaml one")
    r.add_argument("--storage", help=storage_help)
    r.add_argument("--n-trials", type=int, help="finished trials to reach in total (overrides the file)")
    r.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train and measure")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a study field, e.g. --set train.epochs=3 --set sampler=tpe")
    r.add_argument("--sampler", metavar="NAME", help="search strategy by name (same as --set sampler=NAME)")
    r.add_argument("--pruner", metavar="NAME", help="pruner by name (same as --set pruner=NAME)")
    r.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes on this machine (needs journal:/// or postgresql:// storage); the same "
                        "command on another machine joins the study; n_trials stays the total")
    r.add_argument("--trial-timeout", type=float, metavar="S", help="fail a trial that runs longer than S seconds")
    r.add_argument("--allow-changed", action="append", metavar="FIELD",
                   help="continue an existing study although the file changes FIELD on purpose (train.epochs, "
                        "train, measure, constraints, data_dir, val_fraction); each trial records its setting")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("ls", help="list the studies in a storage")
    ls.add_argument("--storage", help=storage_help)
    ls.set_defaults(func=cmd_ls)

    s = sub.add_parser("show", help="the Pareto set or the top trials of a study")
    s.add_argument("study")
    s.add_argument("--storage", help=storage_help)
    s.add_argument("--top", type=int, default=10)
    s.set_defaults(func=cmd_show)

    b = sub.add_parser("benchmark", help="compare search strategies over several seeded runs")
    b.add_argument("--space", default="nano")
    b.add_argument("--dataset", default="nanobench", help="nanobench answers trials from the shipped table")
    b.add_argument("--strategies", default="random,tpe,rea", help="comma-separated sampler names")
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--trials", type=int, default=100)
    b.add_argument("--epochs", type=int, default=5, help="training epochs (ignored by nanobench)")
    b.add_argument("--markdown", action="store_true", help="print a Markdown table")
    b.set_defaults(func=cmd_benchmark)

    d = sub.add_parser("dashboard", help="open optuna-dashboard on a storage (127.0.0.1 unless --host)")
    d.add_argument("--storage", help=storage_help)
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--artifacts", metavar="DIR", help="artifact folder (default <db>.artifacts beside an SQLite file)")
    d.set_defaults(func=cmd_dashboard)

    from nasopt.cli.latency import add_parser as add_latency_table

    add_latency_table(sub)
    from nasopt.cli import export, profile, retrain  # export, train, profile: each module adds its subcommand
    for module in (export, retrain, profile):
        module.add_parser(sub)
    from nasopt.cli import report

    report.add_parser(sub)
    return p


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up that follows is not interrupted again
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """The command. Ctrl-C and SIGTERM at any moment, start-up included, end with one line and exit code
    130 or 143 (a running trial has been failed and queued again by then); never a traceback."""
    old = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        args = parser().parse_args(argv)
        return int(args.func(args))
    except UserError as e:
        print(f"nasopt: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("\nnasopt: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("\nnasopt: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def entry() -> None:
    """The installed `nasopt` command and `python -m nasopt.cli`: `main`, then exit. After an interruption
    the trial is already failed and queued; the interpreter's teardown (torch's thread pools, the
    garbage of a trained network) can take seconds on a loaded machine, so the process ends at once."""
    code = main()
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
