"""Weight inheritance: epochs a child needs to reach its parent's accuracy, with and without inheriting.

    python benchmarks/bench_inherit.py [--pairs 4] [--epochs 10] [--threads 1]

For each pair, a random mobile architecture (the parent) is trained on digits for `--epochs` epochs;
the child is the parent with its last stage changed (one more block, another kernel), so it shares
every layer before that stage. The child is trained from scratch and from the parent's inherited
weights (same seed, same schedule); the script prints, per pair and as a median, the epochs each
needs to reach the parent's final validation accuracy, and the share of tensors inherited.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import optuna
import torch

from nasopt.artifacts._inherit import Recorder, artifact_store_for, inherit, save_weights
from nasopt.data import load_task
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.space import random_arch
from nasopt.train import TrainConfig, train


def _child(arch: dict, space: MobileSpace) -> dict:
    last = f"stage{space.stages}"
    child = dict(arch)
    depth = int(arch[f"{last}.depth"])
    if depth < space.max_depth:  # one more block at the end of the last stage
        child[f"{last}.depth"] = depth + 1
        child[f"{last}.block{depth}.kernel"], child[f"{last}.block{depth}.expand"] = 5, 3
    else:  # or another kernel for its last block
        k = f"{last}.block{depth - 1}.kernel"
        child[k] = 3 if arch[k] != 3 else 7
    return child


def _epochs_to(curve: list[dict], target: float) -> int | None:
    return next((r["epoch"] for r in curve if r["val_acc"] >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task, space = load_task("digits"), MobileSpace(stages=3, max_depth=3)
    config = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05)
    fresh_epochs, inherited_epochs, shares = [], [], []
    print(f"digits, mobile space, {args.epochs} epochs per training; target = parent's final val_acc")
    for pair in range(args.pairs):
        with tempfile.TemporaryDirectory() as tmp:
            store = artifact_store_for(None, tmp)
            study = optuna.create_study(direction="maximize")
            parent_arch = random_arch(space, seed=100 + pair)
            recorder = Recorder()
            torch.manual_seed(pair)
            parent = space.build(parent_arch, task, recorder)
            trial = study.ask()
            target = train(parent, task, config, seed=pair).val_acc
            trial.set_user_attr("decisions", recorder.sequence)
            save_weights(trial, parent, store)
            study.tell(trial, target)

            child_arch = _child(parent_arch, space)
            runs = {}
            for mode in ("fresh", "inherited"):
                recorder = Recorder()
                torch.manual_seed(1000 + pair)
                child = space.build(child_arch, task, recorder)
                info = inherit(child, recorder, study, store) if mode == "inherited" else None
                if info:
                    shares.append(len(info["tensors"]) / info["total"])
                runs[mode] = _epochs_to(train(child, task, config, seed=1000 + pair).curve, target)
        show = {m: (e if e is not None else f">{args.epochs}") for m, e in runs.items()}
        print(f"pair {pair}: parent {space.describe(parent_arch)} val_acc {target:.4f}; child epochs to "
              f"reach it: fresh {show['fresh']}, inherited {show['inherited']}")
        fresh_epochs.append(runs["fresh"] or args.epochs + 1)
        inherited_epochs.append(runs["inherited"] or args.epochs + 1)
    print(f"median epochs to parent accuracy: fresh {statistics.median(fresh_epochs)}, "
          f"inherited {statistics.median(inherited_epochs)} "
          f"(ratio {statistics.median(fresh_epochs) / statistics.median(inherited_epochs):.2f}x; "
          f"{args.epochs + 1} = not reached); tensors inherited: {statistics.fmean(shares):.0%} on average")


if __name__ == "__main__":
    main()
