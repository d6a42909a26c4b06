"""The one rule that prints a metric's value (nasopt/_format.py), on a table of values."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from nasopt._format import MISSING, fmt

TABLE = [
    # (value, metric, text)
    (23778.0, "params", "23,778"),            # an objective value is a float: still a count
    (23778, "params", "23,778"),
    (np.int64(5770), "params", "5,770"),
    (1234567.0, "macs", "1,234,567"),
    (262, None, "262"),
    (1234, "number", "1234"),                 # a trial number is a name, not a quantity
    (0.98611, "accuracy", "0.9861"),
    (0.85, "int8_accuracy", "0.8500"),
    (np.float32(0.5), "val_acc", "0.5000"),
    (0.123456, "latency_ms", "0.1235"),
    (12.3456, "latency_ms", "12.35"),
    (1234.56, "latency_ms", "1,235"),
    (0.00004, "energy_mj", "4.000e-05"),
    (3.2e9, "synflow", "3.200e+09"),
    (0.0, "latency_ms", "0"),
    (1234.5678, "int8_kb", "1,234.57"),
    (2.0, "flash_kb", "2.00"),
    (1.5, "params", "1.5"),                   # not whole: not forced to an integer
    (None, "params", MISSING),
    (math.nan, "accuracy", MISSING),
    (float("nan"), None, MISSING),
    ("", None, MISSING),
    (True, "feasible", "yes"),
    (np.bool_(False), "feasible", "no"),
    ("nano:c3-mp-c5-sk", "arch", "nano:c3-mp-c5-sk"),
    (math.inf, "latency_ms", "inf"),
]


@pytest.mark.parametrize(("value", "metric", "text"), TABLE)
def test_each_kind_of_value_reads_one_way(value, metric, text):
    assert fmt(value, metric) == text


def test_no_scientific_notation_or_trailing_zero_for_a_count():
    for v in (23778.0, 99999.0, 1e6, 5770.0):
        text = fmt(v, "params")
        assert "e" not in text and not text.endswith(".0"), text


def test_the_rule_imports_nothing_heavy():
    code = "import sys, nasopt._format; print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
