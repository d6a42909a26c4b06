"""Throughput of `nasopt run --workers N` on PostgreSQL: trials per second with 1, 2, 4 and 8 workers.

Each configuration runs a fresh study in a fresh database (dropped afterwards) through the real
runner (`nasopt.run(spec, storage=URL, workers=N)`: forked workers, the global budget, heartbeats,
outage-retrying storage). The objective is a 50 ms wait plus a nano-bench look-up (the nano space's
`suggest` sleeps `--objective-ms`; no training), so the figures show how the runner and the database
scale, not how a model trains. Throughput is measured from the trials' own timestamps (first start to
last completion), which leaves out process start-up; the wall time including start-up is printed too.

With W workers and a per-trial cost of t_obj (the wait) + t_cpu (sampler, ORM, driver and server work,
which needs a core), the ideal is min(W / (t_obj + t_cpu), cores / t_cpu) trials per second: on a
machine with few cores the CPU part caps the speed-up long before W does. The script prints the
measured t_cpu of one worker, and says what that cap is here. It reports; it never asserts.

    .venv/bin/python benchmarks/bench_workers.py                          # ~3-5 min on 2 cores
    .venv/bin/python benchmarks/bench_workers.py --workers 1,2,4,8 --trials 960 --sampler tpe
    .venv/bin/python benchmarks/bench_workers.py --admin postgresql://USER@HOST/DB
"""

from __future__ import annotations

import argparse
import math
import os
import threading
import time
import uuid
from typing import Any

import optuna
from optuna.trial import TrialState

import nasopt
from nasopt.search_spaces.nano import NanoSpace


class SlowNano(NanoSpace):
    """The nano space whose `suggest` takes `delay` seconds more: a stand-in for a cheap objective."""

    def __init__(self, *, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def suggest(self, trial: Any) -> dict[str, Any]:
        time.sleep(self.delay)
        return super().suggest(trial)


def _database(admin: str, create: bool, name: str | None = None) -> str:
    import psycopg
    from psycopg import sql

    name = name or f"nasopt_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        statement = "CREATE DATABASE {}" if create else "DROP DATABASE IF EXISTS {} WITH (FORCE)"
        conn.execute(sql.SQL(statement).format(sql.Identifier(name)))
    return admin.rsplit("/", 1)[0] + "/" + name


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=seed)


class ServerCPU:
    """CPU seconds of the local PostgreSQL server's processes during a run (nan when none runs here).

    A backend process lives as long as its connection, so its CPU must be read before it exits: a
    thread samples /proc every 0.1 s and keeps each process's last reading (what a backend does in its
    last 0.1 s is missed)."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._stop = threading.Event()
        self._read(self.first)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def _read(into: dict[str, float]) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if "(postgres)" in stat:
                fields = stat.rsplit(")", 1)[1].split()
                into[f"{pid}:{fields[19]}"] = (int(fields[11]) + int(fields[12])) / tick  # pid + start time

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._read(self.last)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._read(self.last)
        if not self.first and not self.last:
            return math.nan
        return sum(v - self.first.get(k, 0.0) for k, v in self.last.items())


def run_one(admin: str, workers: int, trials: int, delay: float, sampler: str) -> dict[str, float]:
    url = _database(admin, create=True)
    try:
        spec = nasopt.StudySpec(name="bench", space=SlowNano(delay=delay), dataset="nanobench",
                                objectives={"accuracy": "maximize", "params": "minimize"},
                                sampler=_sampler(sampler, 0), n_trials=trials)
        cpu0, server = os.times(), ServerCPU()
        t0 = time.perf_counter()
        study = nasopt.run(spec, storage=url, workers=workers, progress=False)
        wall = time.perf_counter() - t0
        cpu1, server_s = os.times(), server.stop()
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
        # children's CPU (the workers) when forked, this process's otherwise
        cpu = (cpu1.children_user + cpu1.children_system - cpu0.children_user - cpu0.children_system) \
            if workers > 1 else (cpu1.user + cpu1.system - cpu0.user - cpu0.system)
        return {"workers": workers, "trials": len(done), "span": span, "wall": wall, "rate": len(done) / span,
                "cpu_ms": 1000 * cpu / len(done), "server_ms": 1000 * server_s / len(done)}
    finally:
        _database(admin, create=False, name=url.rsplit("/", 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin", default=os.environ.get("NASOPT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
                   help="a PostgreSQL URL whose user may create databases")
    p.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    p.add_argument("--trials", type=int, default=960,
                   help="trials per configuration (default 960: a shorter run measures start-up more)")
    p.add_argument("--objective-ms", type=float, default=50.0, help="the objective's own time")
    p.add_argument("--sampler", choices=["random", "tpe"], default="random")
    args = p.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    cores = os.cpu_count() or 1
    print(f"PostgreSQL, {args.trials} trials per configuration, objective {args.objective_ms:g} ms "
          f"({args.sampler} sampler), {cores} cores, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for w in counts:
        row = run_one(args.admin, w, args.trials, args.objective_ms / 1000, args.sampler)
        rows.append(row)
        print(f"  {w} worker(s): {row['rate']:.1f} trials/s ({60 * row['rate']:.0f}/min) over {row['span']:.1f} s, "
              f"wall with start-up {row['wall']:.1f} s, CPU {row['cpu_ms']:.0f} ms/trial in the workers + "
              f"{row['server_ms']:.0f} ms in the PostgreSQL server", flush=True)
    base = rows[0]["rate"]
    t_obj = args.objective_ms / 1000
    t_cpu = rows[0]["cpu_ms"] / 1000  # one worker's CPU per trial (Optuna, SQLAlchemy, psycopg, nasopt)
    server = rows[0]["server_ms"] / 1000
    t_all = t_cpu + (server if math.isfinite(server) else 0.0)  # + the server's share, when it runs here
    print(f"\nload average now {os.getloadavg()[0]:.1f}")
    print("| workers | trials/s | trials/min | ratio to 1 worker | CPU ms/trial (workers + server) | ideal here* |")
    print("|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        ideal = min(row["workers"] / (t_obj + t_all), cores / t_all) * (t_obj + t_all)
        print(f"| {row['workers']} | {row['rate']:.1f} | {60 * row['rate']:.0f} | {row['rate'] / base:.2f}× | "
              f"{row['cpu_ms']:.0f} + {row['server_ms']:.0f} | {ideal:.2f}× |")
    print(f"* min(W, cores · (t_obj + t_cpu) / t_cpu) with t_obj = {1000 * t_obj:.0f} ms, t_cpu = "
          f"{1000 * t_all:.0f} ms (one worker's CPU per trial plus the server's, measured with 1 worker) and "
          f"{cores} cores: the CPU part caps the speed-up at {cores * (t_obj + t_all) / t_all:.1f}× here, whatever "
          "the number of workers (more workers also cost more CPU per trial: switching, more to read).")


if __name__ == "__main__":
    main()
