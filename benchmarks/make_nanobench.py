"""Build nano-bench: every one of the 625 nano architectures trained on digits, several seeds each.

    python benchmarks/make_nanobench.py [--seeds 3] [--epochs 6] [--jobs 2] [-o nasopt/nanobench.json.gz]

The table is what `dataset="nanobench"` answers trials from. The run is resumable: finished rows are
appended to `<output>.partial.jsonl` and skipped when the command is run again.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

SPACE_ARGS = {"C": 12}
TRAIN_ARGS = {"epochs": 5, "batch_size": 128, "lr": 0.1}


def _job(args: tuple[dict[str, str], int, int]) -> dict:
    arch, seed, epochs = args
    import torch

    torch.set_num_threads(1)
    from nasopt.data import load_task
    from nasopt.measure._metrics import count_macs, count_params
    from nasopt.search_spaces.nano import NanoSpace
    from nasopt.space import arch_key
    from nasopt.train import TrainConfig, evaluate, train

    task = _job.task if hasattr(_job, "task") else load_task("digits", seed=0)  # type: ignore[attr-defined]
    _job.task = task  # type: ignore[attr-defined]
    space = NanoSpace(**SPACE_ARGS)
    torch.manual_seed(seed)
    model = space.build(arch, task)
    t0 = time.perf_counter()
    result = train(model, task, TrainConfig(**{**TRAIN_ARGS, "epochs": epochs}), seed=seed)
    return {"key": arch_key(arch), "arch": arch, "seed": seed, "describe": space.describe(arch),
            "val_acc": result.val_acc, "test_acc": evaluate(model, task.test)["acc"],
            "curve": [round(r["val_acc"], 5) for r in result.curve],
            "params": count_params(model), "macs": count_macs(model, task.input_shape),
            "train_s": round(time.perf_counter() - t0, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=TRAIN_ARGS["epochs"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--finalize", action="store_true",
                   help="train nothing: write the table from the seeds that are complete for all 625 architectures")
    p.add_argument("-o", "--output", default=str(Path(__file__).parents[1] / "nasopt" / "nanobench.json.gz"))
    args = p.parse_args()

    from nasopt.search_spaces.nano import NANO_OPS

    partial = Path(args.output + ".partial.jsonl")
    done = set()
    if partial.exists():
        for line in partial.read_text().splitlines():
            row = json.loads(line)
            done.add((row["key"], row["seed"]))
    archs = [{f"pos{i}.op": op for i, op in enumerate(ops)} for ops in itertools.product(NANO_OPS, repeat=4)]
    from nasopt.space import arch_key

    todo = [] if args.finalize else [
        (a, s, args.epochs) for s in range(args.seeds) for a in archs if (arch_key(a), s) not in done]
    print(f"nano-bench: {len(done)} rows done, {len(todo)} to train with {args.jobs} jobs", flush=True)
    t0 = time.time()
    with partial.open("a") as out, mp.get_context("fork").Pool(max(1, min(args.jobs, len(todo)))) as pool:
        for i, row in enumerate(pool.imap_unordered(_job, todo, chunksize=4), 1):
            out.write(json.dumps(row) + "\n")
            out.flush()
            if i % 25 == 0 or i == len(todo):
                rate = i / (time.time() - t0)
                print(f"  {i}/{len(todo)} rows, {rate:.2f} rows/s, eta {(len(todo) - i) / rate / 60:.1f} min",
                      flush=True)
    rows = [json.loads(line) for line in partial.read_text().splitlines()]
    per_seed: dict[int, int] = {}
    for row in rows:
        per_seed[row["seed"]] = per_seed.get(row["seed"], 0) + 1
    seeds = sorted(s for s, n in per_seed.items() if n == len(archs))[: args.seeds]
    rows = [row for row in rows if row["seed"] in seeds]
    table: dict[str, dict] = {}
    for row in rows:
        entry = table.setdefault(row["key"], {"arch": row["arch"], "describe": row["describe"],
                                              "params": row["params"], "macs": row["macs"], "seeds": {}})
        entry["seeds"][str(row["seed"])] = {k: row[k] for k in ("val_acc", "test_acc", "curve", "train_s")}
    meta = {"dataset": "digits", "space": "nano", "space_args": SPACE_ARGS, "ops": list(NANO_OPS),
            "train": {**TRAIN_ARGS, "epochs": args.epochs}, "seeds": len(seeds), "architectures": len(table)}
    with gzip.open(args.output, "wt") as f:
        json.dump({"meta": meta, "table": table}, f, separators=(",", ":"))
    print(f"wrote {args.output}: {len(table)} architectures, {os.path.getsize(args.output) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
