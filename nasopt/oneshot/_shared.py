"""Helpers that several gradient methods share (DARTS, PC-DARTS, ProxylessNAS, ENAS), in one module
rather than imported from one algorithm's privates."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from nasopt.errors import UserError

__all__ = ["SKIP_OPS", "EDGE", "split_half", "rng_state", "set_rng_state", "skip_count"]

SKIP_OPS = ("skip_connect", "skip")
EDGE = re.compile(r"^(?P<node>.+)\.e(?P<index>\d+)$")  # an edge decision's name: "<node>.e<index>"


def split_half(split: Any, seed: int) -> tuple[Any, Any]:
    """Two disjoint random halves of an in-memory split (weights train on one, alphas on the other)."""
    import dataclasses

    if not hasattr(split, "x"):
        raise UserError("one-shot search needs a dataset held in memory (digits, mnist, cifar, mnist1d, ...); "
                        "this one streams from disk")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).to(split.x.device)
    half = len(split) // 2
    a, b = order[:half], order[half:]
    return (dataclasses.replace(split, x=split.x.index_select(0, a), y=split.y.index_select(0, a)),
            dataclasses.replace(split, x=split.x.index_select(0, b), y=split.y.index_select(0, b)))


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": [kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, cached]}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))


def skip_count(arch: Mapping[str, Any]) -> int:
    """Skip-connections in the derived normal cell (all decisions for spaces without cell types)."""
    normal = {k: v for k, v in arch.items() if k.startswith("normal.")}
    return sum(1 for v in (normal or arch).values() if v in SKIP_OPS)
