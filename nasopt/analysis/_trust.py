"""What a reader should not trust in a set of trials (a Pareto front, a top-K list), one line each, for
`nasopt show`, the report and the API:

- the trials' own `warnings` (stored by the runner: near-chance accuracy, a collapsed derived architecture);
- a front whose latencies were measured under different conditions (device, threads, batch, measured
  against predicted): their order is then partly the machine's;
- latencies whose spread (interquartile range) is more than half their median: measured on a busy machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["trial_warnings", "front_warnings", "SPREAD_SHARE"]

SPREAD_SHARE = 0.5  # IQR / median above this: the timing says more about the machine than the network


def trial_warnings(trials: Sequence[Any]) -> list[str]:
    """`trial N: message` for every stored warning of `trials` (FrozenTrials)."""
    return [f"trial {t.number}: {w}" for t in trials for w in (t.user_attrs.get("warnings") or [])]


def _conditions(latency: dict[str, Any]) -> tuple[Any, ...]:
    return (latency.get("method", "measured"), latency.get("device"), latency.get("threads"),
            latency.get("batch_size"))


def front_warnings(trials: Sequence[Any], objectives: Sequence[str] = ("latency_ms",)) -> list[str]:
    """Warnings about the latencies of `trials` when latency is one of `objectives` (or shown beside them)."""
    measured = [(t, t.user_attrs["latency"]) for t in trials if isinstance(t.user_attrs.get("latency"), dict)]
    if "latency_ms" not in objectives or not measured:
        return []
    out = []
    groups: dict[tuple[Any, ...], list[int]] = {}
    for t, latency in measured:
        groups.setdefault(_conditions(latency), []).append(t.number)
    if len(groups) > 1:
        described = "; ".join(f"{method} on {device}, {threads} thread(s), batch {batch}: trials "
                              f"{', '.join(map(str, numbers))}" for (method, device, threads, batch), numbers
                              in groups.items())
        out.append(f"the latencies compared here were taken under different conditions ({described}); re-measure "
                   "them alike (the same MeasureConfig on one machine) or predict all from one latency table")
    noisy = [(t.number, lat["iqr_ms"], lat["median_ms"]) for t, lat in measured
             if lat.get("method", "measured") == "measured" and lat.get("median_ms")
             and lat.get("iqr_ms", 0) > SPREAD_SHARE * lat["median_ms"]]
    if noisy:
        listed = ", ".join(f"{n} (IQR {iqr:.3g} ms on {median:.3g} ms)" for n, iqr, median in noisy)
        out.append(f"latency spread is more than half the median for trials {listed}: the machine was busy while "
                   "they were timed; re-measure on a quiet machine or predict latency from a table "
                   "(MeasureConfig(latency_table=...))")
    return out
