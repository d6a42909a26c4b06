"""The fast one-shot step computes what the straightforward mixed op computes.

`Supernet(fast=True)` (the default) runs images channels-last on the CPU, skips the zero op, shares one ReLU
among the candidates that begin with one, sums the batch-normalised candidates without keeping their outputs
(nasopt.oneshot._fused) and lets max pools find their maxima again in the backward pass. `fast=False` is the
plain `sum_i w_i op_i(x)` in NCHW. Both are built from one seed and compared: logits, every gradient
(weights, alphas, betas), the BN running statistics, and whole DARTS steps (first and second order,
PC-DARTS), to float tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from nasopt.oneshot import DARTS, MixedChooser, Supernet
from nasopt.oneshot.darts import build_supernet
from nasopt.search_spaces import make_space

pytestmark = pytest.mark.usefixtures("one_thread")


class Task:
    def __init__(self, shape: tuple[int, ...], num_classes: int = 10) -> None:
        self.input_shape, self.num_classes, self.device = shape, num_classes, "cpu"


CASES = {  # space, options, input shape
    "darts_cell": ("darts_cell", {"C": 8, "layers": 3}, (3, 16, 16)),
    "nb201": ("nb201", {"C": 8, "N": 1}, (3, 16, 16)),
    "conv1d": ("conv1d", {"C": 8, "layers": 3}, (1, 40)),
}


def pair(case: str, K: int = 1, unrolled: bool = False) -> tuple[Supernet, Supernet, DARTS, Task]:
    name, options, shape = CASES[case]
    space, task = make_space(name, **options), Task(shape)
    strategy = DARTS(partial_channels=K, unrolled=unrolled)
    torch.manual_seed(0)
    fast = build_supernet(space, task, MixedChooser(K), edge_normalization=strategy.normalize_edges)
    with torch.no_grad():  # architecture weights far from uniform, so a wrong weighting shows
        for p in fast.arch_parameters():
            p.copy_(torch.randn_like(p))
    plain = copy.deepcopy(fast)
    plain.fast = False
    for op in plain._mixed:
        op.fast = False
    assert fast.fast and all(op.fast for op in fast._mixed)
    return fast, plain, strategy, task


def batch(task: Task, n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *task.input_shape, generator=g), torch.randint(0, task.num_classes, (n,), generator=g)


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert torch.allclose(a, b, atol=2e-5, rtol=1e-4), (what, float((a - b).abs().max()))


def forward_backward(net: Supernet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    logits = net(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("case", "K"), [("darts_cell", 1), ("darts_cell", 4), ("nb201", 1), ("conv1d", 1),
                                         ("conv1d", 2)])
def test_fast_forward_and_gradients_equal_the_plain_mixed_op(case, K):
    fast, plain, _, task = pair(case, K)
    x, y = batch(task)
    for _ in range(2):  # the second pass runs on updated BN running statistics
        ours, ours_grads = forward_backward(fast, x, y)
        theirs, their_grads = forward_backward(plain, x, y)
        close(ours, theirs, "logits")
        assert ours_grads.keys() == their_grads.keys() and any(n.startswith("alphas.") for n in ours_grads)
        for name, g in ours_grads.items():
            close(g, their_grads[name], name)
    for (name, a), (_, b) in zip(fast.state_dict().items(), plain.state_dict().items(), strict=True):
        close(a.float(), b.float(), name)  # running means and variances, batches counted
    fast.eval(), plain.eval()
    with torch.no_grad():
        close(fast(x), plain(x), "eval logits")


@pytest.mark.parametrize(("K", "unrolled"), [(1, False), (1, True), (4, False)])
def test_fast_darts_steps_move_weights_and_alphas_as_the_plain_ones(K, unrolled):
    fast, plain, strategy, task = pair("darts_cell", K, unrolled)
    optimizers = {id(net): strategy.optimizers(net) for net in (fast, plain)}
    for step in range(2):
        w_batch, a_batch = batch(task, seed=2 * step), batch(task, seed=2 * step + 1)
        for net in (fast, plain):
            strategy.step(net, *optimizers[id(net)], w_batch, a_batch)
    for (name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters(), strict=True):
        close(a, b, name)


def test_fast_supernet_keeps_its_parameters_and_runs_channels_last_on_the_cpu():
    fast, _, strategy, task = pair("darts_cell")
    before = [id(p) for p in fast.parameters()]
    w_opt, _ = strategy.optimizers(fast)
    fast(batch(task)[0])
    assert [id(p) for p in fast.parameters()] == before  # an optimiser made before the first pass still holds them
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert {id(p) for g in w_opt.param_groups for p in g["params"]} <= set(before)
