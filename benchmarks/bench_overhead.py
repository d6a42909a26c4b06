"""Per-trial runner overhead on SQLite: a trial's wall time beyond its training and latency measurement.

Runs a real `nasopt.run(StudySpec(...), storage="sqlite:///<tmp>/bench.db", progress=False)`: the nano
space on digits, TrainConfig(epochs=1), MeasureConfig(repeats=3, warmup=0), nasopt's defaults otherwise
(TPE with constant_liar, no pruner; SQLite in WAL mode with synchronous=NORMAL during the run), one
worker. The sampler is wrapped in a timer: its own computation (TPE fitting its Parzen estimators,
say) is the sampler's cost, which grows with the study and differs per strategy; it is reported on
its own line and is not counted as runner overhead. For every
COMPLETE trial, from the storage (`_objective.py` records `timings` = build_s, latency_s, metrics_s,
train_s on COMPLETE trials only):

    in trial  = (datetime_complete - datetime_start) - timings.train_s - timings.latency_s
                  build    timings.build_s:   suggest (one param write per decision) + describe + `arch`
                                              attr write + duplicate lookup + space.build
                  metrics  timings.metrics_s: peak_memory + count_params + count_macs (fvcore) + 6 user-attr
                                              writes + constraints
                  other    the rest: Trial init, worker system attr, the last epoch's curve write + report +
                                     should_prune, accuracy / timings attr writes, the tell up to
                                     datetime_complete
    between   = datetime_start of the next trial - datetime_complete of this one: the tell's commit,
                  callbacks (progress refresh + budget check: each reads all trials), fail_stale_trials,
                  study.ask (trial row insert)
    sampler   = time inside the sampler's methods for this trial (reported apart)
    overhead  = in trial + between - sampler      (target <= 50 ms/trial)

PRUNED trials (no `timings`) and trials that reused an identical earlier architecture (`reused_from`)
are listed apart (`--pruner median` prunes about half of them). Then the suspects are timed in isolation
on the same data and storage (fvcore MACs vs torch's FlopCounterMode, peak memory, build, one SQLite
attr / param write, ask + tell, also in the rollback journal for comparison, the duplicate lookup and the
budget count over the finished study), and, when the median overhead is over target, a cProfile run of a few
more trials lists the top contributors. `--dir /dev/shm` puts the database on tmpfs (no fsync cost).
The script reports; it never asserts timings.

    .venv/bin/python benchmarks/bench_overhead.py                   # ~1-2 min
    .venv/bin/python benchmarks/bench_overhead.py --trials 100 --runs 3 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

import nasopt
from nasopt.data import load_task
from nasopt.measure._metrics import MeasureConfig, count_macs, count_params, flop_counter_macs, peak_memory
from nasopt.search_spaces.nano import NanoSpace
from nasopt.storage import close_storage, fast_sqlite, open_storage
from nasopt.study._objective import Objective
from nasopt.study._run import finished_count

TARGET_MS = 50.0


def pct(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation; fine for a few dozen points."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    i = q * (len(s) - 1)
    lo = int(i)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (i - lo)


def timeit(f: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


SAMPLER_MS: dict[tuple[str, int], float] = {}  # (study name, trial number) -> ms inside the sampler


class TimedSampler(optuna.samplers.BaseSampler):
    """Delegates to `inner` and adds the time of every call to SAMPLER_MS of the trial it served."""

    def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
        self.inner = inner

    def _timed(self, study: optuna.Study, trial: Any, method: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return getattr(self.inner, method)(study, trial, *args)
        finally:
            key = (study.study_name, trial.number)
            SAMPLER_MS[key] = SAMPLER_MS.get(key, 0.0) + (time.perf_counter() - t0) * 1e3

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> Any:
        return self._timed(study, trial, "infer_relative_search_space")

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: Any) -> Any:
        return self._timed(study, trial, "sample_relative", search_space)

    def sample_independent(self, study: optuna.Study, trial: Any, name: str, distribution: Any) -> Any:
        return self._timed(study, trial, "sample_independent", name, distribution)

    def before_trial(self, study: optuna.Study, trial: Any) -> None:
        self._timed(study, trial, "before_trial")

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        self._timed(study, trial, "after_trial", state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def spec_for(name: str, args: argparse.Namespace, n_trials: int | None = None) -> nasopt.StudySpec:
    inner = (optuna.samplers.RandomSampler(seed=args.seed) if args.sampler == "random" else
             optuna.samplers.TPESampler(seed=args.seed, constant_liar=True))  # nasopt's default
    sampler = TimedSampler(inner)
    pruner = optuna.pruners.MedianPruner() if args.pruner == "median" else None  # None: nasopt's NopPruner
    return nasopt.StudySpec(name=name, space=NanoSpace(), dataset="digits", n_trials=n_trials or args.trials,
                            seed=args.seed, sampler=sampler, pruner=pruner, train=nasopt.TrainConfig(epochs=args.epochs),
                            device="cpu", measure=MeasureConfig(repeats=3, warmup=0))


# ---------------------------------------------------------------------------------------------- the run

def run_once(url: str, name: str, args: argparse.Namespace) -> tuple[optuna.Study, float]:
    t0 = time.perf_counter()
    study = nasopt.run(spec_for(name, args), storage=url, progress=False)
    return study, time.perf_counter() - t0


def breakdown(study: optuna.Study) -> tuple[dict[str, list[float]], dict[str, list[float]], float]:
    """Per-trial components in ms of the COMPLETE trials, whole-trial ms of the others, and the trials' span."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    rows: dict[str, list[float]] = {k: [] for k in ("build", "metrics", "other", "between", "sampler", "overhead",
                                                    "with_sampler", "train", "latency")}
    others: dict[str, list[float]] = {"reused": [], "pruned": [], "pruned, minus curve seconds": [], "failed": []}
    for i, t in enumerate(trials):
        if t.datetime_start is None or t.datetime_complete is None:
            continue
        dur = (t.datetime_complete - t.datetime_start).total_seconds() * 1e3
        nxt = trials[i + 1].datetime_start if i + 1 < len(trials) else None
        between = (nxt - t.datetime_complete).total_seconds() * 1e3 if nxt is not None else float("nan")
        timings = t.user_attrs.get("timings")
        if "reused_from" in t.user_attrs:
            others["reused"].append(dur)
        elif t.state == TrialState.PRUNED:  # pruned trials record no `timings`; the curve has epoch seconds
            others["pruned"].append(dur)
            trained = sum(r.get("seconds", 0.0) for r in t.user_attrs.get("curve", [])) * 1e3
            others["pruned, minus curve seconds"].append(dur - trained)
        elif t.state != TrialState.COMPLETE or timings is None:
            others["failed"].append(dur)
        else:
            train_ms, latency_ms = timings["train_s"] * 1e3, timings["latency_s"] * 1e3
            build_ms, metrics_ms = timings["build_s"] * 1e3, timings["metrics_s"] * 1e3
            rows["build"].append(build_ms)
            rows["metrics"].append(metrics_ms)
            rows["other"].append(dur - train_ms - latency_ms - build_ms - metrics_ms)
            rows["between"].append(between)
            # ask() of the NEXT trial is in `between`; after_trial of this one is in `other`: this trial's
            # before_trial/sample_* calls belong to the previous gap and to build_s; the sum matches overall
            rows["sampler"].append(SAMPLER_MS.get((study.study_name, t.number), 0.0))
            rows["train"].append(train_ms)
            rows["latency"].append(latency_ms)
    gaps = [g for g in rows["between"] if g == g]
    fill = statistics.median(gaps) if gaps else 0.0  # the last trial has no next start: the median gap
    rows["between"] = [g if g == g else fill for g in rows["between"]]
    rows["with_sampler"] = [b + m + o + g for b, m, o, g in zip(rows["build"], rows["metrics"], rows["other"],
                                                                rows["between"], strict=True)]
    rows["overhead"] = [w - s for w, s in zip(rows["with_sampler"], rows["sampler"], strict=True)]
    span = (trials[-1].datetime_complete - trials[0].datetime_start).total_seconds() if trials else 0.0
    return rows, others, span


def report_run(rows: dict[str, list[float]], others: dict[str, list[float]], n_total: int, wall: float,
               span: float) -> float:
    n = len(rows["overhead"])
    counts = ", ".join(f"{len(v)} {k}" for k, v in others.items() if v and "minus" not in k)
    print(f"\n== per-trial overhead of the {n} COMPLETE trials of {n_total} ({counts or 'no others'}); run() wall "
          f"{wall:.1f} s, of which {wall - span:.1f} s before the first trial / after the last (load_task, open "
          "storage, create study)")
    if not n:
        print("   no COMPLETE trial: nothing to break down")
        return float("nan")
    print(f"   {'component':<42} {'median ms':>9} {'p90 ms':>8} {'min':>7} {'max':>7}")
    labels = {
        "build": "build_s: suggest+describe+dup lookup+build",
        "metrics": "metrics_s: memory+params+MACs+attr write",
        "other": "other in trial (init, attr writes, tell)",
        "between": "between trials (commit, callbacks, ask)",
        "sampler": "minus: the sampler's own computation",
        "overhead": "TOTAL runner overhead / trial",
        "with_sampler": "(for reference) overhead incl. the sampler",
        "train": "(excluded) train_s",
        "latency": "(excluded) latency_s",
    }
    for key, label in labels.items():
        xs = rows[key]
        print(f"   {label:<42} {statistics.median(xs):9.1f} {pct(xs, 0.9):8.1f} {min(xs):7.1f} {max(xs):7.1f}")
    for key, xs in others.items():
        if xs:
            what = {"reused": "reused duplicates, whole trial (attrs copied, no build/train)",
                    "pruned": "pruned, whole trial (trained, then pruned at the last epoch)",
                    "pruned, minus curve seconds": "pruned, whole trial minus epoch seconds (~overhead+latency)",
                    "failed": "failed, whole trial"}[key]
            print(f"   {what:<68} median {statistics.median(xs):7.1f} ms, p90 {pct(xs, 0.9):7.1f} ms")
    med = statistics.median(rows["overhead"])
    print(f"   => median overhead {med:.1f} ms/trial (p90 {pct(rows['overhead'], 0.9):.1f}, best "
          f"{min(rows['overhead']):.1f}) vs target <= {TARGET_MS:.0f} ms: {'met' if med <= TARGET_MS else 'NOT met'}")
    return med


# ---------------------------------------------------------------------------------------------- suspects in isolation

def components(study: optuna.Study, url: str, args: argparse.Namespace) -> None:
    task = load_task("digits", seed=args.seed)
    space = NanoSpace()
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "reused_from" not in t.user_attrs][: args.archs]
    models = []
    for t in done:
        torch.manual_seed(0)
        models.append(space.build(t.params, task))
    shape = task.input_shape
    rows: list[tuple[str, list[float], str]] = []

    def per_arch(f: Callable[[Any], Any]) -> list[float]:
        out: list[float] = []
        for m in models:
            out += timeit(lambda m=m: f(m), args.inner)
        return out

    builds = [x for t in done for x in timeit(lambda t=t: space.build(t.params, task), args.inner)]
    rows.append(("space.build (nano)", builds, "build_s"))
    rows.append(("count_macs (fvcore jit trace)", per_arch(lambda m: count_macs(m, shape)), "metrics_s"))
    rows.append(("  alt: flop_counter_macs (FlopCounterMode)", per_arch(lambda m: flop_counter_macs(m, shape)), "-"))
    rows.append(("peak_memory (dispatch mode)", per_arch(lambda m: peak_memory(m, shape)), "metrics_s"))
    rows.append(("count_params", per_arch(count_params), "metrics_s"))

    objective = Objective(spec_for(study.study_name, args), task)
    n = len(study.get_trials(deepcopy=False))
    params = done[-1].params if done else {}
    rows.append((f"duplicate lookup over {n} trials", timeit(lambda: objective._evaluated(study, params, -1), 20),
                 "build_s"))
    rows.append((f"finished_count over {n} trials", timeit(lambda: finished_count(study), 20),
                 "between (x2: budget callback + progress)"))

    # storage writes: a scratch study in the same SQLite file in the run's mode (WAL, synchronous=NORMAL),
    # and the same writes in a second file in SQLite's default rollback journal (what-if: no WAL)
    run_mode = open_storage(url, heartbeat=False)
    fast_sqlite(run_mode)
    for label, storage in (("", run_mode), ("  [rollback journal, synchronous=FULL] ",
                                            open_storage(url.replace("bench.db", "bench_rollback.db"),
                                                         heartbeat=False))):
        scratch = optuna.create_study(study_name="bench_scratch", storage=storage)
        trial = scratch.ask()
        counter = iter(range(10**6))
        rows.append((f"{label}one set_user_attr (SQLite commit)",
                     timeit(lambda t=trial, c=counter: t.set_user_attr(f"k{next(c)}", {"x": 1.0}), 30),
                     "x ~4 per trial" if not label else "-"))
        rows.append((f"{label}one suggest_categorical (param write)",
                     timeit(lambda t=trial, c=counter: t.suggest_categorical(f"p{next(c)}", ("a", "b")), 30),
                     "x 4 per trial (build_s)" if not label else "-"))
        rows.append((f"{label}ask + tell of an empty trial",
                     timeit(lambda s=scratch: s.tell(s.ask(), 0.0), 20), "other + between" if not label else "-"))
        close_storage(storage)

    print(f"\n== suspects timed in isolation ({len(models)} architectures x {args.inner}, SQLite file "
          f"{url.removeprefix('sqlite:///')})")
    print(f"   {'what':<58} {'median ms':>9} {'best ms':>8} {'p90 ms':>8}  counted in")
    for label, xs, where in rows:
        if not xs:  # no COMPLETE trial to take architectures from
            continue
        print(f"   {label:<58} {statistics.median(xs):9.2f} {min(xs):8.2f} {pct(xs, 0.9):8.2f}  {where}")


# ---------------------------------------------------------------------------------------------- profile

def is_torch(file: str, name: str) -> bool:
    path = file.replace(os.sep, "/")
    return "/torch/" in path or "search_spaces/" in path or "nasopt/ops.py" in path or "torch" in name


def profile(url: str, args: argparse.Namespace) -> None:
    n = args.profile_trials
    prof = cProfile.Profile()
    prof.enable()
    nasopt.run(spec_for("bench_profile", args, n), storage=url, progress=False)
    prof.disable()
    stats = pstats.Stats(prof)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    print(f"\n== cProfile of a {n}-trial run: cumulative ms per trial of the main suspects "
          "(nested: a row includes the rows it calls)")
    wanted = [
        ("_objective.py", "_run", "Objective._run (whole objective)"),
        ("train.py", "train", "  train (excluded from overhead)"),
        ("metrics.py", "measure_latency", "  measure_latency (excluded)"),
        ("metrics.py", "count_macs", "  count_macs (fvcore)"),
        ("fvcore/nn/jit_analysis.py", "_analyze", "    fvcore trace + op walk"),
        ("metrics.py", "peak_memory", "  peak_memory"),
        ("_objective.py", "_evaluated", "  duplicate lookup"),
        ("nano.py", "build", "  space.build"),
        ("optuna/trial/_trial.py", "set_user_attr", "  Trial.set_user_attr (all)"),
        ("optuna/trial/_trial.py", "_suggest", "  Trial._suggest (param writes + sampling)"),
        ("optuna/study/study.py", "ask", "Study.ask (create trial, relative sampling)"),
        ("optuna/search_space/intersection.py", "calculate", "  TPE's IntersectionSearchSpace (multivariate)"),
        ("optuna/study/_tell.py", "_tell_with_warning", "tell"),
        ("study.py", "finished_count", "finished_count (callbacks)"),
        ("_progress.py", "refresh", "Progress.refresh (runs even with progress=False)"),
        ("optuna/storages/_heartbeat.py", "fail_stale_trials", "fail_stale_trials"),
        ("sqlalchemy/engine/base.py", "_commit_impl", "SQLite COMMIT (all, incl. fsync)"),
        ("optuna/study/study.py", "get_trials", "Study.get_trials (nasopt: dup lookup, counts, refresh)"),
        ("optuna/storages/_rdb/storage.py", "_get_trials", "RDBStorage._get_trials (all trial reads, cached)"),
    ]
    for suffix, func, label in wanted:
        hits = [(v[1], v[3]) for (file, _line, name), v in raw.items()
                if name == func and file.replace(os.sep, "/").endswith(suffix)]
        if hits:
            calls, cum = sum(h[0] for h in hits), max(h[1] for h in hits)
            print(f"   {label:<52} {cum * 1e3 / n:8.1f} ms/trial  ({calls / n:.1f} calls/trial)")
    print(f"\n   top {args.top} by own time (tottime) outside torch (training and latency are torch), ms per trial:")
    rows = sorted(((k, v) for k, v in raw.items() if not is_torch(k[0], k[2])), key=lambda kv: kv[1][2],
                  reverse=True)[: args.top]
    for (file, line, name), (_cc, nc, tt, ct, _callers) in rows:
        where = "/".join(file.replace(os.sep, "/").split("/")[-2:])
        print(f"   {tt * 1e3 / n:8.1f} own {ct * 1e3 / n:8.1f} cum  {nc / n:7.0f} calls  {name} ({where}:{line})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30, help="trials per run (default 30)")
    p.add_argument("--runs", type=int, default=1, help="independent runs (fresh study each), pooled (default 1)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: two OpenMP threads on a shared 2-core box make training "
                        "times 10x noisier; the overhead itself is single-threaded Python)")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                   help="tpe = nasopt's default (TPE, constant_liar); random = RandomSampler")
    p.add_argument("--pruner", choices=("none", "median"), default="none",
                   help="none = nasopt's default (every trial COMPLETE, all measured); median = Optuna's "
                        "MedianPruner (about half the trials end PRUNED and record no `timings`)")
    p.add_argument("--archs", type=int, default=5, help="architectures for the isolated timings (default 5)")
    p.add_argument("--inner", type=int, default=5, help="repeats per architecture in isolation (default 5)")
    p.add_argument("--profile", action="store_true", help="profile even when the target is met")
    p.add_argument("--no-profile", action="store_true", help="never profile")
    p.add_argument("--profile-trials", type=int, default=15)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--dir", default=None, help="folder for the SQLite file (default: a temp dir; /dev/shm = no fsync)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = "default sampler (TPE, constant_liar)" if args.sampler == "tpe" else "RandomSampler"
    sampler += ", MedianPruner" if args.pruner == "median" else ", no pruner (nasopt's default)"
    print(f"nasopt.run: nano space on digits, {args.trials} trials x {args.runs} run(s), TrainConfig(epochs="
          f"{args.epochs}), MeasureConfig(repeats=3, warmup=0), {sampler}, SQLite "
          "(WAL + synchronous=NORMAL during the run, as nasopt.run sets it); "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), optuna {optuna.__version__}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="nasopt-bench-") as tmp:
        url = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        pooled: dict[str, list[float]] = {}
        others_all: dict[str, list[float]] = {}
        wall_all = span_all = 0.0
        study: optuna.Study | None = None
        for r in range(max(args.runs, 1)):
            study, wall = run_once(url, f"bench_overhead_{r}", args)
            rows, others, span = breakdown(study)
            for k, v in rows.items():
                pooled.setdefault(k, []).extend(v)
            for k, v in others.items():
                others_all.setdefault(k, []).extend(v)
            wall_all += wall
            span_all += span
        med = report_run(pooled, others_all, args.trials * args.runs, wall_all, span_all)
        if study is not None:
            components(study, url, args)
        if args.profile or (not med <= TARGET_MS and not args.no_profile):
            profile(url, args)


if __name__ == "__main__":
    main()
