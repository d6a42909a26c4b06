"""DARTS' int8 budget penalties: `DARTS(penalty="flash_kb")` and `penalty="sram_kb"`
(`nasopt.oneshot._budget_penalty.BudgetPenalty`).

For a one-hot alpha the expectation is the derived network's `flash_kb`/`sram_kb` (nasopt.measure) where the
derived network has every place of the supernet: exact on every nano architecture and on mobile, an upper bound
on nb201's SRAM and on the two-edge derived networks of DARTS cells (whose all-edge network it matches exactly).
The SRAM penalty is the expectation of the peak under independent choices (checked by enumeration), so its
gradient leaves the heavy candidates; a search with it derives a network with less SRAM. Through the CLI: a DARTS
study with an SRAM penalty runs and records the expectation per epoch; an unknown penalty is one line, exit 2.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from test_cli import assert_user_error, nasopt, snapshot

from nasopt.errors import UserError
from nasopt.measure import flash_kb, sram_kb
from nasopt.oneshot import DARTS
from nasopt.oneshot._budget_penalty import BudgetPenalty
from nasopt.oneshot.darts import build_supernet
from nasopt.oneshot.mixed import MixedChooser, param_key
from nasopt.ops import build_op
from nasopt.search_spaces import make_space
from nasopt.search_spaces.darts_cell import DartsCellSpace
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.search_spaces.nano import NanoSpace
from nasopt.space import random_arch


def task(*shape: int) -> SimpleNamespace:
    return SimpleNamespace(input_shape=shape, num_classes=10)


def penalties(space: Any, t: Any) -> dict[str, BudgetPenalty]:
    return {r: BudgetPenalty(r, space, t) for r in ("flash_kb", "sram_kb")}


def candidates(space: Any, t: Any) -> dict[str, tuple[str, ...]]:
    chooser = MixedChooser()
    build_supernet(space, t, chooser)
    return dict(chooser.decisions)


def weights(cands: dict[str, tuple[str, ...]], choice: dict[str, str]) -> dict[str, torch.Tensor]:
    return {n: torch.tensor([float(c == choice[n]) for c in cs]) for n, cs in cands.items()}


# ----------------------------------------------------------------------------- one-hot alpha vs the network

def test_one_hot_equals_flash_and_sram_of_nano_networks():
    space, t = NanoSpace(C=4), task(1, 8, 8)
    pen, cands = penalties(space, t), candidates(space, t)
    names = list(cands)
    for ops in list(itertools.product(space.ops, repeat=len(names)))[::7]:  # 90 of the 625, every op everywhere
        arch = dict(zip(names, ops, strict=True))
        net = space.build(arch, t)
        w = weights(cands, arch)
        assert float(pen["flash_kb"].expected_kb(w)) == pytest.approx(flash_kb(net), abs=1e-9), arch
        assert float(pen["sram_kb"].expected_kb(w)) == pytest.approx(sram_kb(net, t.input_shape), abs=1e-9), arch


def test_one_hot_equals_the_derived_mobile_network():
    """mobile's supernet holds every block; derive drops the skipped ones: same network, same counts."""
    space, t = MobileSpace(stages=2, max_depth=2), task(3, 16, 16)
    pen, cands = penalties(space, t), candidates(space, t)
    rng = random.Random(0)
    values = {"flash_kb": set(), "sram_kb": set()}
    for _ in range(12):
        choice = {n: rng.choice(cs) for n, cs in cands.items()}
        w = weights(cands, choice)
        net = space.build(space.derive({n: v.tolist() for n, v in w.items()}), t)
        true = {"flash_kb": flash_kb(net), "sram_kb": sram_kb(net, t.input_shape)}
        for r in values:
            assert float(pen[r].expected_kb(w)) == pytest.approx(true[r], abs=1e-9), (r, choice)
            values[r].add(round(true[r], 6))
    assert min(len(v) for v in values.values()) > 3  # the choices do move both budgets


def test_cell_spaces_count_every_supernet_edge():
    """DARTS cells: the network with the one-hot op on every edge matches exactly; the derived network keeps two
    edges per node, so the expectation bounds it from above (strictly for flash: dropped edges had weights)."""
    space, t = DartsCellSpace(C=4, layers=3), task(3, 8, 8)
    pen, cands = penalties(space, t), candidates(space, t)
    rng = random.Random(1)
    for _ in range(2):
        choice = {n: rng.choice([c for c in cs if c != "none"]) for n, cs in cands.items()}
        w = weights(cands, choice)
        every_edge = space.supernet(t, lambda name, cs, chosen, C_in, C_out, stride, choice=choice, **options:
                                    build_op(choice[name], C_in, C_out, stride, **options))
        derived = space.build(space.derive({n: v.tolist() for n, v in w.items()}), t)
        flash, sram = (float(pen[r].expected_kb(w)) for r in ("flash_kb", "sram_kb"))
        assert flash == pytest.approx(flash_kb(every_edge), abs=1e-9)
        assert sram == pytest.approx(sram_kb(every_edge, t.input_shape), abs=1e-9)
        assert flash > flash_kb(derived) and sram >= sram_kb(derived, t.input_shape) - 1e-9


def test_nb201_flash_is_exact_and_sram_an_upper_bound():
    space, t = make_space("nb201", C=4), task(3, 8, 8)
    pen, cands = penalties(space, t), candidates(space, t)
    exact = 0
    for seed in range(16):
        arch = random_arch(space, seed=seed)
        net, w = space.build(arch, t), weights(cands, arch)
        assert float(pen["flash_kb"].expected_kb(w)) == pytest.approx(flash_kb(net), abs=1e-9)
        expected, true = float(pen["sram_kb"].expected_kb(w)), sram_kb(net, t.input_shape)
        assert true - 1e-9 <= expected <= 1.25 * true, arch
        exact += math.isclose(expected, true)
    assert exact >= 8


# ----------------------------------------------------------------------------- the expectation and its gradient

def test_expected_sram_is_the_expected_peak_over_independent_choices():
    """Enumerate every architecture of a small space whose blocks set the peak: E[peak] under random weights is
    sum over architectures of P(arch) x peak(arch), and the peaks differ (the heaviest is the normaliser)."""
    space, t = MobileSpace(stages=1, max_depth=3, kernels=(3,), expands=(1, 3, 6)), task(3, 16, 16)
    pen, cands = BudgetPenalty("sram_kb", space, t), candidates(space, t)
    names = list(cands)
    g = torch.Generator().manual_seed(0)
    probs = {n: F.softmax(torch.randn(len(cs), generator=g) * 2, dim=0) for n, cs in cands.items()}
    brute = 0.0
    for ops in itertools.product(*(cands[n] for n in names)):
        choice = dict(zip(names, ops, strict=True))
        p = math.prod(float(probs[n][cands[n].index(o)]) for n, o in choice.items())
        brute += p * float(pen.expected_bytes(weights(cands, choice)))
    assert float(pen.expected_bytes(probs)) == pytest.approx(brute, rel=1e-6)
    peaks = {float(pen.expected_bytes(weights(cands, dict(zip(names, ops, strict=True)))))
             for ops in itertools.product(*(cands[n] for n in names))}
    assert len(peaks) > 2 and max(peaks) == pytest.approx(pen.largest_bytes())


def test_the_penalty_gradient_moves_weight_off_the_heavy_candidates():
    space, t = MobileSpace(stages=2, max_depth=2, kernels=(3,), expands=(1, 6)), task(3, 16, 16)
    chooser = MixedChooser()
    supernet = build_supernet(space, t, chooser)
    for resource in ("flash_kb", "sram_kb"):
        pen = BudgetPenalty(resource, space, t)
        supernet.zero_grad()
        value = pen(supernet)
        assert 0 < float(value.detach()) <= 1
        value.backward()
        grad = supernet.alphas[param_key("stage1.block0")].grad  # candidates (k3 e1, k3 e6): the first block
        assert grad is not None and grad[1] > 0 > grad[0], (resource, grad)  # descent lowers e6, raises e1


def test_an_sram_penalty_derives_a_network_with_less_sram(digits_task, one_thread):
    space = MobileSpace(stages=2, max_depth=2, kernels=(3,), expands=(1, 6))
    sram = {}
    for penalty in (None, "sram_kb"):
        search = DARTS(epochs=2, batch_size=64, arch_lr=0.03, penalty=penalty, penalty_weight=5.0)
        arch, summary = search.search(space, digits_task, seed=0)
        sram[penalty] = sram_kb(space.build(arch, digits_task), digits_task.input_shape)
        if penalty:
            history = summary["history"]
            assert history[-1]["expected_sram_kb"] < history[0]["expected_sram_kb"]
    assert sram["sram_kb"] < sram[None], sram


def test_unknown_budget_is_refused():
    with pytest.raises(UserError, match="unknown penalty 'sram'.*'flash_kb' or 'sram_kb'"):
        DARTS(penalty="sram")


# ----------------------------------------------------------------------------- the CLI

SRAM_DARTS = '''
import nasopt
from nasopt.oneshot import DARTS
from nasopt.search_spaces.mobile import MobileSpace

study = nasopt.StudySpec(name="tiny_sram", space=MobileSpace(stages=2, max_depth=2, kernels=(3,), expands=(1, 6)),
                         dataset="digits", objectives={"accuracy": "maximize", "sram_kb": "minimize"},
                         strategy=DARTS(epochs=1, batch_size=64, penalty=PENALTY),
                         train=nasopt.TrainConfig(epochs=1, batch_size=128))
'''


def test_a_darts_study_with_an_sram_penalty_runs_and_records_the_expectation(tmp_path):
    (tmp_path / "sram.py").write_text(SRAM_DARTS.replace("PENALTY", "'sram_kb'"))
    result = nasopt("run", "sram.py", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trial = optuna.load_study(study_name="tiny_sram", storage=f"sqlite:///{tmp_path / 'nasopt.db'}").trials[0]
    assert trial.state == TrialState.COMPLETE
    search = trial.user_attrs["search"]
    assert 0 < search[0]["expected_cost"] <= 1 and search[0]["expected_sram_kb"] > 0
    assert trial.user_attrs["sram_kb"] == pytest.approx(trial.values[1])


def test_an_unknown_penalty_is_one_line_exit_2_and_writes_nothing(tmp_path):
    (tmp_path / "sram.py").write_text(SRAM_DARTS.replace("PENALTY", "'sram'"))
    before = snapshot(tmp_path)
    assert_user_error(nasopt("run", "sram.py", "-q", cwd=tmp_path), "unknown penalty 'sram'", "'sram_kb'")
    assert snapshot(tmp_path) == before and not Path(tmp_path / "nasopt.db").exists()
