"""The one rule for printing a metric's value, so that the same value reads the same in `nasopt show`, the
table printed after `nasopt run`, the HTML report and the dashboard's `feasible` note.

By the value and the metric's name (`fmt(value, metric)`):

- missing (None, NaN, "")                      -> "-"
- True / False                                 -> "yes" / "no"
- a trial number (`number`, `trial`)           -> the plain integer: "1234"
- an integer, or a whole float of an integer-valued metric (params, macs, a trial number, counts)
                                               -> the integer with thousands separators: 23778.0 -> "23,778"
- a share in [0, 1]: accuracy, int8_accuracy, val_acc, agreement, ...  -> 4 decimals: "0.9372"
- kilobytes (`*_kb`)                           -> 2 decimals with separators: "1,234.57"
- any other float (latency_ms, energy_mj, memory_mb, losses, proxies, the user's metrics)
                                               -> 4 significant digits; from 1,000 on the whole number with
                                                  separators ("12,346"), from 1e7 or below 1e-3 (non-zero)
                                                  in scientific notation ("1.235e+09", "4.200e-05")
- anything else (strings, lists)               -> str(value)

No scientific notation for an ordinary count, no "23778.0", no mix of both styles in one column.
This module imports nothing heavy: the CLI formats without numpy, pandas or torch.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt", "MISSING", "INTEGER_METRICS"]

_NUMBERS = frozenset({"number", "trial"})  # a name, not a quantity: no separators
MISSING = "-"
# metrics whose values are whole numbers even when stored as floats (an objective value is always a float)
INTEGER_METRICS = frozenset({"params", "macs", "number", "trial", "trials", "epochs", "count", "flops",
                             "n_trials", "finished", "complete", "pruned", "failed"})


def _is_share(metric: str) -> bool:
    m = metric.lower()
    return "acc" in m or m in ("agreement", "share", "precision", "recall", "f1")


def _significant(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e7 or a < 1e-3:
        return f"{v:.3e}"
    if a >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def fmt(value: Any, metric: str | None = None) -> str:
    """`value` as text by the rule of the module doc; `metric` is the name it is reported under."""
    if value is None or (isinstance(value, str) and not value):
        return MISSING
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, bool):
        return "yes" if value else "no"
    name = (metric or "").lower()
    if isinstance(value, int) or (name in INTEGER_METRICS and isinstance(value, float) and value.is_integer()):
        return str(int(value)) if name in _NUMBERS else f"{int(value):,}"
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if name and _is_share(name):
        return f"{value:.4f}"
    if name.endswith("_kb") or name == "kb":
        return f"{value:,.2f}"
    return _significant(value)
