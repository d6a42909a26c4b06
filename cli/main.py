"""The `nasopt` command: a thin argparse front over library functions.

Every user mistake is a `UserError`: one line on stderr, exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from nasopt.cli.studyfile import apply_sets, load_study_file
from nasopt.errors import Terminated, UserError

__all__ = ["main", "entry", "parser", "load_study_file", "apply_sets"]

def cmd_run(args: argparse.Namespace) -> int:
    import nasopt
    from nasopt.storage import DEFAULT_STORAGE, mask_url
    from nasopt.study._run import finished_count

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
        from nasopt.keys import STRATEGY_KEY

        gradient = [t for t in study.get_trials(deepcopy=False) if STRATEGY_KEY in t.system_attrs and t.state.is_finished()]
        done = finished_count(study)
        print(f"study {spec.name!r}: {len(gradient)} gradient trial(s) finished, {done} sampled "
              f"{_states(study, done)} {where}")
    else:
        done = finished_count(study)
        print(f"study {spec.name!r}: {done} trials finished {_states(study, done)} {where}")
    print(_table(study, top=5))
    return 0


def _states(study: Any, finished: int) -> str:
    """How the sampled trials that count against the budget ended: "(3 complete, 1 pruned)"."""
    from nasopt.keys import STRATEGY_KEY

    sampled = [t for t in study.get_trials(deepcopy=False) if STRATEGY_KEY not in t.system_attrs]
    complete = sum(t.state.name == "COMPLETE" for t in sampled)
    pruned = sum(t.state.name == "PRUNED" for t in sampled)
    failed = finished - complete - pruned  # a failure whose retry is pending does not count
    return f"({complete} complete, {pruned} pruned{f', {failed} failed' if failed > 0 else ''})"


def _table(study: Any, top: int) -> str:
    """The best trials (one objective) or the Pareto set: one row per distinct architecture (a trial that
    reused an earlier trial's result, or ran the same architecture again, is counted in the first's row),
    every value by the one rule of `nasopt._format`, and no column that is empty in every row."""
    from nasopt._format import MISSING, fmt
    from nasopt.analysis._results import pareto_front, trials_frame

    multi = len(study.directions) > 1
    frame = pareto_front(study=study) if multi else trials_frame(study=study)
    if not multi and not frame.empty:
        frame = frame[frame["state"] == "COMPLETE"]
        frame = frame.sort_values(frame.columns[2], ascending=study.direction.name == "MINIMIZE")
    if frame.empty:
        complete = any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
        return f"no {'feasible ' if complete else ''}complete trials: nothing to show"
    columns = ["number", *study.metric_names, "params", "macs", "latency_ms", "int8_accuracy", "int8_latency_ms",
               "int8_kb", "strategy", "arch"]
    columns = list(dict.fromkeys(c for c in columns if c in frame.columns))
    records = frame.to_dict("records")
    rows: dict[Any, dict[str, Any]] = {}  # the architecture -> its first (best) row
    counts: dict[Any, int] = {}
    for r in records:
        arch = r.get("arch")
        key = arch if isinstance(arch, str) and arch else ("trial", r["number"])
        counts[key] = counts.get(key, 0) + 1
        if key not in rows or r["number"] < rows[key]["number"]:  # the original, not a trial that reused it
            rows[key] = r
    shown = list(rows)[:top] if not multi else list(rows)
    if any(counts[k] > 1 for k in shown):
        columns.insert(1, "trials")
    cells = [[fmt(counts[k], "trials") if c == "trials" else fmt(rows[k].get(c), c) for c in columns] for k in shown]
    keep = [i for i, c in enumerate(columns) if any(row[i] != MISSING for row in cells)]
    header = [columns[i] for i in keep]
    cells = [[row[i] for i in keep] for row in cells]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    text = [h.rjust(w) if h != "arch" else h for h, w in zip(header, widths, strict=True)]
    lines = ["  ".join(text).rstrip()]
    for row in cells:
        lines.append("  ".join(v if h == "arch" else v.rjust(w)
                               for v, h, w in zip(row, header, widths, strict=True)).rstrip())
    title = "Pareto set" if multi else f"top {top} trials"
    note = "" if "trials" not in header else " (trials: how many trials ran that architecture)"
    return f"{title}{note}:\n" + "\n".join(lines) + _warnings(study, [rows[k]["number"] for k in shown])


def _warnings(study: Any, numbers: list[int]) -> str:
    """What should not be trusted among the shown trials (nasopt.analysis._trust), as lines after the table."""
    from nasopt.analysis._trust import front_warnings, trial_warnings

    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    shown = [by_number[n] for n in numbers if n in by_number]
    messages = trial_warnings(shown) + front_warnings(shown, study.metric_names or [])
    return ("\n" if messages else "") + "".join(f"\nwarning: {m}" for m in messages)


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
    from nasopt.analysis._results import load_study

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

    from nasopt.analysis._dashboard import FeasibilityView, artifact_folder

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

    from nasopt.api import benchmark

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
        "trials to optimum (median)": [f">{args.trials}" if t != t else f"{t:g}" for t in frame["trials_to_opt"]],  # NaN: not found in most runs
        "optimum found": frame["found_opt"],
        "s/run": frame["seconds"].map(lambda v: f"{v:.1f}"),
    })
    print(f"{args.space} on {args.dataset}: {args.runs} runs x {args.trials} trials per strategy")
    print(table.to_markdown(index=False) if args.markdown else table.to_string(index=False))
    return 0


def _examples(*lines: str) -> dict[str, Any]:
    """The `epilog` of a command's --help: runnable examples, printed as written."""
    return {"epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def parser() -> argparse.ArgumentParser:
    """The `nasopt` command line: every subcommand, each option with a help text, each --help with examples."""
    p = argparse.ArgumentParser(prog="nasopt", description="Neural Architecture Search on Optuna.", **_examples(
        "nasopt run studies/nano_evolution.py --n-trials 10   # a study into ./nasopt.db",
        "nasopt ls && nasopt show nano_evolution              # what is stored, the best trials",
        "nasopt list spaces                                   # the names a study can use (see `nasopt list -h`)"))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    storage_help = "storage URL (default sqlite:///nasopt.db in the working directory)"

    r = sub.add_parser("run", help="run or resume the study defined in a study file",
                       description="Run or resume the study a study file defines. The names --sampler, --pruner "
                                   "and --set space=/strategy=/dataset= accept are listed by `nasopt list "
                                   "samplers|pruners|spaces|strategies|datasets`; objectives and constraints take "
                                   "the names of `nasopt list metrics`.",
                       **_examples("nasopt run studies/nano_evolution.py",
                                   "nasopt run studies/mobile_pareto.py --n-trials 60 --set train.epochs=3",
                                   "nasopt run studies/nano_evolution.py --sampler tpe --pruner median "
                                   "--set name=nano_tpe"))
    r.add_argument("file", help="a .py study file defining `study = nasopt.StudySpec(...)`, or a .yaml one")
    r.add_argument("--storage", help=storage_help)
    r.add_argument("--n-trials", type=int, help="finished trials to reach in total (overrides the file)")
    r.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train and measure")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a study field, e.g. --set train.epochs=3 --set sampler=tpe")
    r.add_argument("--sampler", metavar="NAME", help="search strategy by name (same as --set sampler=NAME; "
                                                     "names: `nasopt list samplers`)")
    r.add_argument("--pruner", metavar="NAME", help="pruner by name (same as --set pruner=NAME; names: "
                                                    "`nasopt list pruners`)")
    r.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes on this machine (needs journal:/// or postgresql:// storage); the same "
                        "command on another machine joins the study; n_trials stays the total")
    r.add_argument("--trial-timeout", type=float, metavar="S", help="fail a trial that runs longer than S seconds")
    r.add_argument("--allow-changed", action="append", metavar="FIELD",
                   help="continue an existing study although the file changes FIELD on purpose (train.epochs, "
                        "train, measure, constraints, data_dir, val_fraction); each trial records its setting")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("ls", help="list the studies in a storage", **_examples(
        "nasopt ls", "nasopt ls --storage sqlite:///runs/mobile.db"))
    ls.add_argument("--storage", help=storage_help)
    ls.set_defaults(func=cmd_ls)

    s = sub.add_parser("show", help="the Pareto set or the top trials of a study", **_examples(
        "nasopt show nano_evolution", "nasopt show mobile_pareto --storage sqlite:///runs/mobile.db",
        "nasopt show nano_evolution --top 3"))
    s.add_argument("study", help="the study's name (see `nasopt ls`)")
    s.add_argument("--storage", help=storage_help)
    s.add_argument("--top", type=int, default=10, metavar="K",
                   help="how many of the best trials a single-objective study shows (default 10)")
    s.set_defaults(func=cmd_show)

    b = sub.add_parser("benchmark", help="compare search strategies over several seeded runs", **_examples(
        "nasopt benchmark --runs 3 --trials 50        # nano on the shipped table: seconds",
        "nasopt benchmark --strategies random,tpe,nsga2,rea,pnas --runs 10 --trials 100 --markdown"))
    b.add_argument("--space", default="nano", help="the space to search (default nano; `nasopt list spaces`); "
                                                   "the nanobench table covers nano only")
    b.add_argument("--dataset", default="nanobench", help="nanobench answers trials from the shipped table; "
                                                          "another name trains (`nasopt list datasets`)")
    b.add_argument("--strategies", default="random,tpe,rea",
                   help="comma-separated sampler names (default random,tpe,rea; `nasopt list samplers`)")
    b.add_argument("--runs", type=int, default=3, help="seeded runs per strategy (default 3)")
    b.add_argument("--trials", type=int, default=100, help="trials per run (default 100)")
    b.add_argument("--epochs", type=int, default=5, help="training epochs (ignored by nanobench)")
    b.add_argument("--markdown", action="store_true", help="print a Markdown table")
    b.set_defaults(func=cmd_benchmark)

    d = sub.add_parser("dashboard", help="open optuna-dashboard on a storage (127.0.0.1 unless --host)", **_examples(
        "nasopt dashboard                     # http://127.0.0.1:8080 on ./nasopt.db",
        "nasopt dashboard --storage sqlite:///runs/mobile.db --port 8081"))
    d.add_argument("--storage", help=storage_help)
    d.add_argument("--port", type=int, default=8080, help="the port to serve on (default 8080)")
    d.add_argument("--host", default="127.0.0.1",
                   help="the address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 serves everyone)")
    d.add_argument("--artifacts", metavar="DIR", help="artifact folder (default <db>.artifacts beside an SQLite file)")
    d.set_defaults(func=cmd_dashboard)

    from nasopt.cli.latency import add_parser as add_latency_table

    add_latency_table(sub)
    from nasopt.cli import export, profile, retrain  # export, train, profile: each module adds its subcommand
    for module in (export, retrain, profile):
        module.add_parser(sub)
    from nasopt.cli import listing, report

    report.add_parser(sub)
    listing.add_parser(sub)
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
