"""Results that should not be trusted, said where they are stored: a trial's `warnings` user attr (a list of
one-line messages, read by `show`, the report and the API).

- `near_chance`: a final accuracy within 10 % of the way from chance (1 / classes) to perfect: the network
  learned (almost) nothing — too few epochs, a diverging learning rate, or data that does not fit the task.
- `collapsed`: a derived architecture whose searched ops are mostly parameter-free (skip, pooling, zero) —
  DARTS' documented collapse (Zela et al. 2020; Chu et al. 2020), or an all-`zero` network. Only a cell
  space's op choices count: decisions offering ops with weights *and* a pool or `zero` (nano, DARTS cells,
  nb201, conv1d). A macro space's skip for a dropped block (mobile, micro: depth) and a residual's
  zero-or-skip choice are no sign of collapse.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import optuna

from nasopt.ops import build_op
from nasopt.space import fixed

__all__ = ["WARNINGS_ATTR", "near_chance", "collapsed", "warn", "COLLAPSE_SHARE"]

WARNINGS_ATTR = "warnings"
COLLAPSE_SHARE = 2 / 3  # DARTS' published cells keep at most half of their ops parameter-free
_IDENTITIES = ("skip", "skip_connect")


def near_chance(accuracy: float | None, num_classes: int | None) -> str | None:
    """A message when `accuracy` is within 10 % of the way from chance to 1, else None."""
    if accuracy is None or not num_classes or num_classes < 2:
        return None
    chance = 1 / num_classes
    if accuracy > chance + 0.1 * (1 - chance):
        return None
    return (f"final accuracy {accuracy:.3f} is near chance ({chance:.3f} for {num_classes} classes): the network "
            "learned almost nothing; train longer (epochs), lower the learning rate, or check the data")


@functools.cache
def _has_weights(op: str, C_in: int, C_out: int, stride: int, options: tuple[tuple[str, Any], ...]) -> bool:
    try:
        return any(p.numel() for p in build_op(op, C_in, C_out, stride, **dict(options)).parameters())
    except Exception:  # an op this shape cannot build: not counted
        return True


def collapsed(space: Any, arch: Mapping[str, Any], task: Any) -> str | None:
    """A message when at least COLLAPSE_SHARE of the derived architecture's searched ops have no weights."""
    seen: list[tuple[str, bool]] = []

    def choose(name: str, candidates: Any, chosen: Any, C_in: int, C_out: int, stride: int, **options: Any) -> Any:
        key = tuple(sorted((k, v) for k, v in options.items() if isinstance(v, int | float | str | bool)))
        weighted = [_has_weights(c, C_in, C_out, stride, key) for c in candidates]
        cell_choice = any(weighted) and any(not w and c not in _IDENTITIES for c, w in zip(candidates, weighted, strict=True))
        if chosen is not None and cell_choice:
            seen.append((str(chosen), _has_weights(str(chosen), C_in, C_out, stride, key)))
        return fixed(name, candidates, chosen, C_in, C_out, stride, **options)

    try:
        space.build(arch, task, choose)
    except Exception:  # the check never fails a trial
        return None
    free = [op for op, weights in seen if not weights]
    if not seen or len(free) < COLLAPSE_SHARE * len(seen):
        return None
    if all(op in ("zero", "none") for op in free) and len(free) == len(seen):
        return (f"every searched op of the derived architecture is 'zero' ({len(seen)} of {len(seen)}): the supernet "
                "collapsed and the network passes no signal; search longer, or use PC-DARTS or DARTS(max_skips=...)")
    counts = ", ".join(f"{op} x{free.count(op)}" for op in sorted(set(free)))
    return (f"{len(free)} of {len(seen)} searched ops of the derived architecture have no weights ({counts}): the "
            "documented DARTS collapse; search longer, or use PC-DARTS or DARTS(max_skips=2, skip_guard='penalize')")


def warn(trial: optuna.Trial, message: str | None) -> None:
    """Add `message` to the trial's `warnings` (once)."""
    if message is None:
        return
    current = list(trial.user_attrs.get(WARNINGS_ATTR) or [])
    if message not in current:
        trial.set_user_attr(WARNINGS_ATTR, [*current, message])
