"""The int8 budgets known before training: `flash_kb` and `sram_kb` (nasopt.measure._budgets).

SRAM is checked against hand counts on a chain, a residual block and a DARTS cell, and against an
independent liveness computation over the torch.fx graph of DARTS and NB201 networks; flash
against the closed form from the parameters on every bundled space. Then the runner: a flash limit
prunes before training with the reason, sram_kb is an objective, an unreachable sram_kb budget is
refused through the CLI with exit 2 and no database, and nano-bench says it has no budgets.
"""

from __future__ import annotations

import math
import operator
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

import nasopt
from nasopt._format import fmt
from nasopt.errors import UserError
from nasopt.measure import activation_steps, flash_bytes, flash_kb, sram_bytes, sram_kb
from nasopt.search_spaces import make_space
from nasopt.search_spaces.conv1d import CONV1D_OPS
from nasopt.search_spaces.darts_cell import DartsCellSpace, Genotype
from nasopt.search_spaces.nano import NanoSpace
from nasopt.space import random_arch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def task(*shape: int) -> SimpleNamespace:
    return SimpleNamespace(input_shape=shape, num_classes=10)


# --------------------------------------------------------------------------------------- hand counts

def test_chain_hand_count():
    """conv-bn-relu-conv-pool-linear on (1, 8, 8), int8 = 1 byte per element:

    step            alive (bytes)                                   sum
    conv1 1->4      input 1x8x8 = 64 + out 4x8x8 = 256               320
    bn, relu        in place on conv1's buffer (nothing reads it)    256
    conv2 4->8      conv1 out 256 + out 8x8x8 = 512                  768  <- peak (the input died at conv1)
    maxpool 2       512 + out 8x4x4 = 128                            640
    flatten         a view of the pool's buffer                      128
    linear 128->10  128 + 10                                         138

    flash: conv1 36 weights + 9 x 4 channels (int32 bias = the folded BN's shift, float32 scale, int8
    zero point) = 72; BN folded: 0; conv2 288 + 9 x 8 = 360; linear 1280 + 9 x 10 = 1370; 1802 bytes.
    """
    chain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 8, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    steps = activation_steps(chain, (1, 8, 8))
    assert [(s.op, s.live) for s in steps] == [("conv2d", 320), ("batch_norm", 256), ("relu", 256),
                                              ("conv2d", 768), ("max_pool2d", 640), ("flatten", 128),
                                              ("linear", 138)]
    assert [s.new for s in steps] == [256, 0, 0, 512, 128, 0, 10]
    assert sram_bytes(chain, (1, 8, 8)) == 768 and sram_kb(chain, (1, 8, 8)) == 0.75
    assert flash_bytes(chain) == 72 + 360 + 1370 == 1802 and flash_kb(chain) == 1802 / 1024


class Residual(nn.Module):
    def __init__(self, skip: bool = True) -> None:
        super().__init__()
        self.conv1, self.conv2, self.skip = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1), skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.skip else out


def test_residual_block_holds_the_skip_tensor():
    """x (4x8x8 = 256) -> conv 4->8 -> conv 8->4 -> + x:

    conv1   x 256 + out 512                          768
    conv2   x 256 (held for the add) + 512 + 256    1024  <- peak: the skip tensor is alive
    add     x 256 + conv2 out 256 + sum 256          768
    Without the skip the input dies at conv1 and the peak is conv2's 512 + 256 = 768.
    """
    assert [(s.op, s.live) for s in activation_steps(Residual(), (4, 8, 8))] == [
        ("conv2d", 768), ("conv2d", 1024), ("add", 768)]
    assert sram_bytes(Residual(), (4, 8, 8)) == 1024
    assert sram_bytes(Residual(skip=False), (4, 8, 8)) == 768
    assert flash_bytes(Residual()) == (4 * 8 * 9 + 9 * 8) + (8 * 4 * 9 + 9 * 4)


def test_darts_cell_hand_count():
    """DartsCellSpace(C=2, layers=1, nodes=2) on (1, 8, 8): stem conv 1->6 + BN, one reduction cell of 4
    channels (C doubles) whose nodes are n0 = maxpool(p0) + maxpool(p1), n1 = skip(n0) + maxpool(p1),
    output cat(n0, n1), then global mean and linear 8->10. The stem output s (6x8x8 = 384) is both cell
    inputs, so the first preprocessing's ReLU must copy it and s is held for the second:

     0 stem conv          x 64 + s 384                          448
     1 stem BN            in place                              384
     2 p0: relu(s)        s 384 + copy 384                      768
     3 p0: conv 6->4 1x1  s 384 + copy 384 + p0 4x8x8 = 256    1024  <- peak
     4 p0: BN             in place                  s + p0      640
     5 p1: relu(s)        in place (last reader)    s + p0      640
     6 p1: conv           s 384 + p0 256 + p1 256               896
     7 p1: BN             in place                  p0 + p1     512
     8 maxpool(p0) /2     p0 + p1 + a 4x4x4 = 64                576
     9 maxpool(p1)        p1 (read again by n1) + a + b         384
    10 n0 = a + b         p1 + a + b + n0                       448
    11 maxpool(p1)        p1 + n0 + c                           384  (skip(n0) is the identity: no op)
    12 n1 = n0 + c        n0 (kept for the cat) + c + n1        192
    13 cat                n0 + n1 + out 128                     256
    14 flatten            view                                  128
    15 mean               128 + 8                               136
    16 linear             8 + 10                                 18

    flash: stem 54 + 9 x 6 = 108, each preprocessing conv 24 + 9 x 4 = 60, linear 80 + 9 x 10 = 170 (the
    BNs fold into their convs, the pools and the skip have no weights): 108 + 60 + 60 + 170 = 398 bytes.
    """
    cell = [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1)]
    net = DartsCellSpace(C=2, layers=1, nodes=2).build_genotype(
        Genotype(normal=cell, normal_concat=[2, 3], reduce=cell, reduce_concat=[2, 3]), task(1, 8, 8))
    steps = activation_steps(net, (1, 8, 8))
    assert [s.live for s in steps] == [448, 384, 768, 1024, 640, 640, 896, 512, 576, 384, 448, 384, 192, 256,
                                       128, 136, 18]
    peak = max(range(len(steps)), key=lambda i: steps[i].live)
    assert (peak, steps[peak].op) == (3, "conv2d")
    assert sram_bytes(net, (1, 8, 8)) == 1024
    assert flash_bytes(net) == 108 + 60 + 60 + 170 == 398


# ------------------------------------------------------- an independent liveness count on the fx graph

_VIEWS = (nn.Identity, nn.Dropout, nn.Flatten)
_UNARY = (nn.ReLU, nn.ReLU6, nn.BatchNorm1d, nn.BatchNorm2d)


def fx_peak(model: nn.Module, shape: tuple[int, ...]) -> int:
    """The same definition, computed on the torch.fx graph: nodes in order, a view or identity is its
    input's buffer, a BN/ReLU module (or an add of a constant, `sum()`'s 0 + t) runs in place when no later
    node reads its input's buffer, every other node writes a new buffer alive until its last user (the
    output: until the end)."""
    gm = torch.fx.symbolic_trace(model.eval())
    ShapeProp(gm).propagate(torch.zeros(1, *shape))
    modules = dict(gm.named_modules())
    nodes = [n for n in gm.graph.nodes if isinstance(n.meta.get("tensor_meta"), TensorMetadata)]
    order = {n: i for i, n in enumerate(nodes)}
    output = next(n for n in gm.graph.nodes if n.op == "output")
    buffer: dict[torch.fx.Node, torch.fx.Node] = {}
    size: dict[torch.fx.Node, int] = {}

    def last_use(root: torch.fx.Node) -> int:
        users = [u for n, r in buffer.items() if r is root for u in n.users]
        return max([len(nodes) if u is output else order.get(u, -1) for u in users] + [order[root]])

    for n in nodes:
        ins = [a for a in n.all_input_nodes if a in buffer]
        kind = type(modules[n.target]) if n.op == "call_module" else None
        if n.op == "placeholder":
            buffer[n] = n
        elif (kind is not None and issubclass(kind, _VIEWS)) or (
                n.op == "call_method" and n.target in ("flatten", "view", "reshape")):
            buffer[n] = buffer[ins[0]]
        elif ((kind is not None and issubclass(kind, _UNARY)) or (n.target is operator.add and len(ins) == 1)) \
                and last_use(buffer[ins[0]]) == order[n]:
            buffer[n] = buffer[ins[0]]
        else:
            buffer[n] = n
        size[n] = math.prod(n.meta["tensor_meta"].shape)
    live = [0] * len(nodes)
    for root in set(buffer.values()):
        born = 0 if root.op == "placeholder" else order[root]
        for i in range(born, min(last_use(root), len(nodes) - 1) + 1):
            live[i] += size[root]
    return max(live)


@pytest.mark.parametrize("name, config, shape", [
    ("darts_cell", dict(C=2, layers=1, ops=("max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "dil_conv_3x3")),
     (1, 8, 8)),
    ("conv1d", dict(C=2, layers=1, ops=tuple(op for op in CONV1D_OPS if op != "skip_connect")), (1, 16)),
    ("nb201", dict(C=4, N=1), (1, 8, 8)),
])
def test_sram_matches_an_independent_liveness_count(name, config, shape):
    """DARTS reduction cells (the states held until the concatenation, the ReLU copies of a state read
    twice) and NB201 (cell sums, residual blocks whose shortcut is held), 4 random architectures each.
    fx cannot trace everything the recorder runs: skip_connect on a reduction cell's inputs is
    FactorizedReduce and NB201's `none` is Zero (both branch on shapes), so they are left out here."""
    space = make_space(name, **config)
    rng = random.Random(0)
    for seed in range(4):
        arch = random_arch(space, seed=seed)
        if name == "nb201":
            arch = {edge: rng.choice(["skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]) for edge in arch}
        net = space.build(arch, task(*shape))
        assert sram_bytes(net, shape) == fx_peak(net, shape), (name, seed)


# ------------------------------------------------------------------------- flash: the closed form

SPACES = [("nano", {"C": 8}, (1, 8, 8)), ("mobile", {}, (1, 8, 8)), ("layers", {}, (1, 8, 8)),
          ("nb201", {"C": 4, "N": 1}, (1, 8, 8)), ("darts_cell", {"C": 2, "layers": 3}, (1, 8, 8)),
          ("conv1d", {"C": 2}, (1, 40))]


def standalone_bn_channels(name: str, arch: dict, net: nn.Module) -> int:
    """The BatchNorms that follow no conv: NB201's last BN (after a cell's sum), a layers genome's
    `batchnorm` layers (after a conv's ReLU, a pool, a skip's add or the input). Every other BN of the
    bundled spaces directly follows the conv(s) it folds into."""
    if name == "nb201":
        return net.lastact[0].num_features
    if name == "layers":
        return sum(net.layers[i].op[1].num_features for i in range(arch["n_layers"])
                   if arch[f"layer{i}.type"] == "batchnorm")
    return 0


@pytest.mark.parametrize("name, config, shape", SPACES)
def test_flash_is_the_closed_form_of_the_parameters(name, config, shape):
    """Every weight matrix/kernel 1 byte per element + 9 bytes per output channel (int32 bias, float32
    scale, int8 zero point); biases and folded BN parameters live in those 4 bias bytes; a standalone BN
    is a depthwise 1x1 conv: 10 bytes per channel."""
    space = make_space(name, **config)
    for seed in range(3 if name != "layers" else 12):
        arch = random_arch(space, seed=seed)
        net = space.build(arch, task(*shape))
        closed = sum(p.numel() + 9 * p.shape[0] for p in net.parameters() if p.dim() >= 2)
        closed += 10 * standalone_bn_channels(name, arch, net)
        assert flash_bytes(net) == closed, (name, seed)
        assert flash_kb(net) == closed / 1024


# ------------------------------------------------------------------------------------- the runner

class Untold(optuna.samplers.RandomSampler):
    """Takes the study's limits and ignores them (`use_limits`, see nasopt.samplers.with_limits): it proposes
    networks over the limit, whose rejection before training is what is tested."""

    def use_limits(self, limits: object) -> None:
        pass


def test_flash_limit_prunes_before_training_and_sram_is_an_objective(tmp_path, digits_task, one_thread):
    """NanoSpace(C=8): 314 bytes without a conv at any position, + 648 per conv3x3, + 1672 per conv5x5;
    a 1.5 KB limit keeps at most one conv3x3."""
    spec = nasopt.StudySpec(name="budgets", space=NanoSpace(C=8), dataset="digits",
                            objectives={"accuracy": "maximize", "sram_kb": "minimize"},
                            constraints={"flash_kb": 1.5}, sampler=Untold(seed=1),
                            n_trials=6, train=nasopt.TrainConfig(epochs=1, batch_size=128),
                            measure=nasopt.MeasureConfig(warmup=0, repeats=3))
    study = nasopt.run(spec, storage=f"sqlite:///{tmp_path / 'b.db'}", progress=False)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned and complete
    for t in pruned:
        reason = t.user_attrs["pruned_reason"]
        assert reason == f"constraint violated before training: flash_kb={fmt(t.user_attrs['flash_kb'], 'flash_kb')} > 1.50"
        assert "curve" not in t.user_attrs and "accuracy" not in t.user_attrs  # never trained
    for t in complete:
        assert t.user_attrs["flash_kb"] <= 1.5 and t.values[1] == t.user_attrs["sram_kb"]
        net = spec.space.build(t.params, digits_task)
        assert t.user_attrs["flash_kb"] == flash_kb(net)
        assert t.user_attrs["sram_kb"] == sram_kb(net, digits_task.input_shape)


def test_a_default_study_counts_no_budgets(tmp_path, one_thread):
    spec = nasopt.StudySpec(name="plain", space=NanoSpace(C=4), dataset="digits", n_trials=1,
                            train=nasopt.TrainConfig(epochs=1, batch_size=128),
                            measure=nasopt.MeasureConfig(warmup=0, repeats=3))
    trial = nasopt.run(spec, storage=f"sqlite:///{tmp_path / 'p.db'}", progress=False).trials[0]
    assert "params" in trial.user_attrs and "flash_kb" not in trial.user_attrs and "sram_kb" not in trial.user_attrs


def test_an_unreachable_sram_budget_is_refused_through_the_cli(tmp_path):
    """NanoSpace(C=8) on digits sums its positions: from the second position on, whatever the ops, the
    running total and the position's input are two buffers of 8x8x8 = 512 bytes and the add (or the op)
    writes a third, so no network needs under 1536 bytes = 1.5 KB."""
    (tmp_path / "budget.py").write_text(
        "import nasopt\nfrom nasopt.search_spaces.nano import NanoSpace\n"
        "study = nasopt.StudySpec(name='tiny_sram', space=NanoSpace(C=8), dataset='digits', n_trials=2,\n"
        "                         constraints={'sram_kb': 1}, train=nasopt.TrainConfig(epochs=1))\n")
    db = tmp_path / "budget.db"
    result = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", "budget.py", "--storage", f"sqlite:///{db}"],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasopt: error: ") and "Traceback" not in result.stderr
    assert "sram_kb <= 1, but the smallest sram_kb found in " in lines[0], lines[0]
    assert " architectures is 1.500;" in lines[0] and "constraints={'sram_kb': 1.5}" in lines[0], lines[0]
    assert not db.exists() and not list(Path(tmp_path).glob("*.db*"))


def test_nanobench_has_no_budgets(tmp_path):
    spec = nasopt.StudySpec(name="nb", space=NanoSpace(), dataset="nanobench", constraints={"sram_kb": 64})
    with pytest.raises(UserError, match=r"nanobench has no 'sram_kb'; its metrics are accuracy, params, macs "
                                        r"\(sram_kb needs the network itself: search the space on real data"):
        nasopt.run(spec, storage=f"sqlite:///{tmp_path / 'n.db'}", progress=False)
    assert not (tmp_path / "n.db").exists()
