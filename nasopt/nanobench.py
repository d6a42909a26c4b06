"""nano-bench: a tabular benchmark of all 625 nano architectures, shipped with the package.

Every architecture of the nano space (4 positions x {conv3x3, conv5x5, maxpool3x3, skip, zero}) was
trained on the digits task with nasopt's own trainer, several seeds each (see
`benchmarks/make_nanobench.py`, which rebuilds the table). `dataset="nanobench"` answers a trial by
looking its architecture up: the validation accuracy of one seed (chosen from the trial's seed, so
the answer is as noisy as a real training run), the per-epoch curve (so pruners work), params and
MACs. A search of 500 trials takes seconds, which makes comparing strategies over many runs cheap.
"""

from __future__ import annotations

import functools
import gzip
import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from nasopt.errors import UserError
from nasopt.space import arch_key

__all__ = ["NanoBench", "load"]

METRICS = ("accuracy", "params", "macs")


@dataclass(frozen=True)
class NanoBench:
    """The loaded table; quacks like a `Task` where the runner needs one (shape and classes)."""

    meta: dict[str, Any]
    table: dict[str, dict[str, Any]] = field(repr=False)
    name: str = "nanobench"
    input_shape: tuple[int, ...] = (1, 8, 8)
    num_classes: int = 10

    @property
    def n_seeds(self) -> int:
        return int(self.meta["seeds"])

    def entry(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        key = arch_key(arch)
        if key not in self.table:
            raise UserError(f"architecture {dict(arch)} is not in nano-bench; nanobench answers only the nano "
                            "space's 625 architectures (NanoSpace() with its default positions and ops)")
        return self.table[key]

    def query(self, arch: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """One training run's record: val_acc, test_acc, curve, params, macs, train_s (seed = seed mod n)."""
        entry = self.entry(arch)
        run = entry["seeds"][str(seed % self.n_seeds)]
        return {**run, "params": entry["params"], "macs": entry["macs"], "seed": seed % self.n_seeds}

    def mean_val_acc(self, arch: Mapping[str, Any]) -> float:
        return statistics.fmean(r["val_acc"] for r in self.entry(arch)["seeds"].values())

    def mean_test_acc(self, arch: Mapping[str, Any]) -> float:
        return statistics.fmean(r["test_acc"] for r in self.entry(arch)["seeds"].values())

    @functools.cached_property
    def optimum(self) -> dict[str, Any]:
        """The architecture with the best mean validation accuracy over seeds (the first of `optima`)."""
        return self.optima[0]

    @functools.cached_property
    def optima(self) -> list[dict[str, Any]]:
        """Every architecture whose mean validation accuracy over seeds equals the best (the table has ties:
        three at the top), in the table's order; finding any of them is finding the optimum."""
        means = [(statistics.fmean(r["val_acc"] for r in e["seeds"].values()), e) for e in self.table.values()]
        top = max(m for m, _ in means)
        return [dict(e["arch"]) for m, e in means if m == top]

    def check_space(self, space: Any) -> None:
        """Raise UserError unless `space` makes exactly the decisions the table was built on."""
        try:
            names = set(space.distributions())
            choices = {n: tuple(d.choices) for n, d in space.distributions().items()}
        except AttributeError:
            raise UserError("dataset 'nanobench' is a table of the nano space's architectures only; use the nano "
                            "space (NanoSpace(), --space nano), or train another space on a dataset: "
                            "dataset='digits' or 'mnist1d' (CLI: --dataset digits)") from None
        sample = next(iter(self.table.values()))["arch"]
        ops = tuple(self.meta.get("ops", ()))
        if names != set(sample) or (ops and any(c != ops for c in choices.values())):
            raise UserError(f"dataset 'nanobench' answers only the nano space's decisions {sorted(sample)}; "
                            f"the study's space has {sorted(names)}: use space=NanoSpace() (CLI: --set space=nano), or train "
                            "this space on a dataset: dataset='digits' or 'mnist1d' (CLI: --dataset digits)")


@functools.cache
def load() -> NanoBench:
    """The shipped table (cached)."""
    path = resources.files("nasopt").joinpath("nanobench.json.gz")
    try:
        with resources.as_file(path) as file, gzip.open(file, "rt") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError("nano-bench table missing from the package; rebuild it with "
                        "python benchmarks/make_nanobench.py") from None
    return NanoBench(meta=data["meta"], table=data["table"])
