"""The fast one-shot step computes what the straightforward mixed op computes.

`Supernet(fast=True)` (the default) runs images channels-last on the CPU, skips the zero op, shares one ReLU
among the candidates that begin with one, sums the batch-normalised candidates without keeping their outputs
(nasopt.oneshot._fused) and lets max pools find their maxima again in the backward pass. `fast=False` is the
plain `sum_i w_i op_i(x)` in NCHW. Both are built from one seed and compared: logits, every gradient
(weights, alphas, betas), the BN running statistics, and whole DARTS steps (first and second order,
PC-DARTS), to float tolerance. PC-DARTS' few-channel kernels (nasopt.oneshot._small: elementwise BN, the
merge of partial channels as matrix products, 1x1 convs as matmuls, avg pools as depthwise sums) are also
checked one by one against the ops they stand in for.
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
    """In float64: Adam's first update of an architecture weight is lr * sign(gradient), so in float32 a
    gradient near zero whose sign the summation order flips moves that weight by 2 lr in one of the two."""
    fast, plain, strategy, task = pair("darts_cell", K, unrolled)
    fast.double(), plain.double()
    optimizers = {id(net): strategy.optimizers(net) for net in (fast, plain)}
    for step in range(2):
        (xw, yw), (xa, ya) = batch(task, seed=2 * step), batch(task, seed=2 * step + 1)
        for net in (fast, plain):
            strategy.step(net, *optimizers[id(net)], (xw.double(), yw), (xa.double(), ya))
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


@pytest.mark.parametrize("K", [1, 4])
def test_the_edges_leaving_one_node_pool_it_once(K):
    """A node of a DARTS cell feeds several edges, whose max pools (and ReLU, PC-DARTS' channel slice and
    bypass pool) compute the same values: the fast supernet computes them once per node and forward pass
    (the values and gradients above are the plain op's)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Pools(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.startswith(("max_pool2d.", "max_pool2d_with_indices.")):
                self.count += 1
            return func(*args, **(kwargs or {}))

    fast, plain, _, task = pair("darts_cell", K)  # 3 cells, the 2nd and 3rd reduce; 4 nodes of 2-5 edges
    x, _ = batch(task)
    counts = []
    for net in (fast, plain):
        with Pools() as pools:
            net(x)
        counts.append(pools.count)
    # per cell one max pool per node that has edges leaving it (5 of 14 edges); PC-DARTS' bypassing
    # channels of the reducing edges: one pool per input node (2 of 8 edges) in each of 2 reduction cells
    assert counts == [5 * 3 + (2 * 2 if K > 1 else 0), 14 * 3 + (8 * 2 if K > 1 else 0)]


# PC-DARTS' few-channel kernels (nasopt.oneshot._small), each against the op it stands in for: values,
# gradients and BN running statistics, on channels-last tensors of 4 channels (the elementwise paths) and 8
# (ATen's kernels)


def channels_last(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2 + 0.5).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("C", [2, 4, 8])
def test_few_channel_bn_and_weighted_backward_equal_batchnorm(C):
    from nasopt.oneshot._small import FewChannelBN, bn_forward, weighted_bn_backward

    z = channels_last(6, C, 8, 8).requires_grad_(True)
    g, wi = channels_last(6, C, 8, 8, seed=1), torch.tensor(0.3, requires_grad=True)
    ours, theirs = torch.nn.BatchNorm2d(C, affine=False), torch.nn.BatchNorm2d(C, affine=False)
    for bn in (ours, theirs):
        bn.running_mean.fill_(0.2)
    y = FewChannelBN(ours)(z)
    (gz,) = torch.autograd.grad(y, z, g)
    y_ref = theirs(z)
    (wi * y_ref).backward(g)
    close(y, y_ref, "bn output")
    close(gz * 0.3, z.grad, "bn input gradient")
    close(ours.running_mean, theirs.running_mean, "running mean")
    close(ours.running_var, theirs.running_var, "running var")
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 1
    mean, var = z.detach().mean((0, 2, 3)), z.detach().var((0, 2, 3), unbiased=False)
    grad_w, grad_z = weighted_bn_backward(g, wi.detach(), z.detach(), mean, (var + 1e-5).rsqrt(), 1e-5, True)
    close(grad_w, wi.grad, "weight gradient")
    close(grad_z, z.grad, "input gradient")
    grad_w, grad_z = weighted_bn_backward(g, wi.detach(), z.detach(), mean, (var + 1e-5).rsqrt(), 1e-5, False)
    close(grad_w, wi.grad, "weight gradient without the input's")
    assert grad_z is None
    y_scaled, *_ = bn_forward(z.detach(), torch.nn.BatchNorm2d(C, affine=False), torch.tensor(0.3))
    close(y_scaled, 0.3 * y_ref.detach(), "scaled bn output")


@pytest.mark.parametrize("stride", [1, 2])
def test_merge_shuffled_equals_concatenation_then_channel_shuffle(stride):
    from nasopt.oneshot._small import merge_shuffled
    from nasopt.oneshot.mixed import channel_shuffle

    K, C = 4, 16
    x = channels_last(3, C, 8, 8).requires_grad_(True)
    out = channels_last(3, C // K, 8 // stride, 8 // stride, seed=2).requires_grad_(True)
    scale = torch.tensor(0.7, requires_grad=True)
    g = channels_last(3, C, 8 // stride, 8 // stride, seed=3)
    rest = F.max_pool2d(x[:, C // K:], 2, 2) if stride > 1 else x
    merged = merge_shuffled(out, rest, K, scale, 0 if stride > 1 else C // K, {})
    assert merged is not None
    ours = torch.autograd.grad(merged, (x, out, scale), g, retain_graph=True)
    ref = channel_shuffle(torch.cat([out, scale * (rest if stride > 1 else x[:, C // K:])], 1), K)
    close(merged, ref, "merged channels")
    for a, b, what in zip(ours, torch.autograd.grad(ref, (x, out, scale), g), ("x", "out", "scale"), strict=True):
        close(a, b, f"gradient of {what}")


def test_pointwise_and_avg_pool_stand_ins_equal_the_modules():
    from nasopt.oneshot._small import FastAvgPool, FastPointwise

    conv = torch.nn.Conv2d(4, 6, 1, bias=False).to(memory_format=torch.channels_last)
    for module, fast in ((conv, FastPointwise(conv)),
                         *((pool, FastAvgPool(pool)) for pool in
                           (torch.nn.AvgPool2d(3, s, 1, count_include_pad=False) for s in (1, 2)))):
        x = channels_last(3, 8, 7, 7)[:, 2:6].requires_grad_(True)  # a channel slice, as PC-DARTS passes
        ours, theirs = fast(x), module(x)
        close(ours, theirs, f"{type(module).__name__} output")
        g = torch.randn_like(theirs)
        params = [x, *module.parameters()]
        for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(theirs, params, g), strict=True):
            close(a, b, f"{type(module).__name__} gradient")


def test_pc_darts_fast_ops_use_the_few_channel_kernels():
    from nasopt.oneshot._small import FastAvgPool, FastPointwise, FewChannelBN

    fast, *_ = pair("darts_cell", 4)
    kinds = {type(layer) for op in fast._mixed for f in op._fast if isinstance(f, torch.nn.Sequential) for layer in f}
    kinds |= {type(f) for op in fast._mixed for f in op._fast}
    assert {FastAvgPool, FastPointwise, FewChannelBN} <= kinds


def test_channel_slice_gives_the_slice_and_a_channels_last_gradient():
    from nasopt.oneshot._small import channel_slice

    x = channels_last(3, 16, 8, 8).requires_grad_(True)
    for start, stop in ((0, 4), (4, 16), (2, 9)):
        g = channels_last(3, stop - start, 8, 8, seed=start + 1)
        ours = channel_slice(x, start, stop)
        close(ours, x[:, start:stop], "slice")
        (grad,) = torch.autograd.grad(ours, x, g)
        close(grad, torch.autograd.grad(x[:, start:stop], x, g)[0], "slice gradient")
        assert grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("K", "penalty"), [(1, None), (4, None), (4, "memory")])
def test_first_order_step_equals_the_full_backward_form(K, penalty):
    """DARTS.step's first-order architecture update takes only the architecture gradients; the same step with
    `.backward()` over everything (the weights' gradients then set to None) must leave the same parameters,
    the same .grad of every parameter and the same BN running statistics."""
    from nasopt.oneshot.mixed import candidate_costs

    fast, _, strategy, task = pair("darts_cell", K)
    strategy = DARTS(partial_channels=K, penalty=penalty)
    ref = copy.deepcopy(fast)
    name, options, _ = CASES["darts_cell"]
    chooser = MixedChooser(K)
    build_supernet(make_space(name, **options), task, chooser)  # (its candidates' full-width costs)
    costs = candidate_costs(chooser, penalty, None) if penalty else None
    opts = {id(net): strategy.optimizers(net) for net in (fast, ref)}
    for step in range(2):
        w_batch, a_batch = batch(task, seed=2 * step), batch(task, seed=2 * step + 1)
        strategy.step(fast, *opts[id(fast)], w_batch, a_batch, costs)
        w_opt, a_opt = opts[id(ref)]
        a_opt.zero_grad(set_to_none=True)
        strategy._arch_loss(ref, *a_batch, costs, False, F.cross_entropy).backward()
        a_opt.step()
        arch_grads = [a.grad.clone() for a in ref.arch_parameters()]
        w_opt.zero_grad(set_to_none=True)
        F.cross_entropy(ref(w_batch[0]), w_batch[1]).backward()
        torch.nn.utils.clip_grad_norm_(ref.weight_parameters(), strategy.grad_clip)
        w_opt.step()
        for a, g in zip(ref.arch_parameters(), arch_grads, strict=True):
            a.grad = g  # the step's weight pass computes no architecture gradient: .grad is the update's
    for (name, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters(), strict=True):
        close(a, b, name)
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            close(a.grad, b.grad, f"{name}.grad")
    for (name, a), (_, b) in zip(fast.named_buffers(), ref.named_buffers(), strict=True):
        close(a.float(), b.float(), name)


def test_second_order_gradient_is_the_same_with_the_passes_frozen(monkeypatch):
    """The unrolled architecture gradient freezes the architecture for the weights' gradient and the weights for
    the two Hessian-vector passes (nothing computes a gradient it discards); with nothing frozen it must come
    out the same: every .grad, the weights restored, the BN running statistics."""
    import contextlib

    import nasopt.oneshot.darts as darts_module

    fast, _, strategy, task = pair("darts_cell", 1, unrolled=True)
    ref = copy.deepcopy(fast)
    w_batch, a_batch = batch(task, seed=0), batch(task, seed=1)
    w_opt, _ = strategy.optimizers(fast)
    strategy.unrolled_backward(fast, w_opt, *w_batch, *a_batch)
    with monkeypatch.context() as patch:
        patch.setattr(darts_module, "frozen", lambda params: contextlib.nullcontext())
        strategy.unrolled_backward(ref, strategy.optimizers(ref)[0], *w_batch, *a_batch)
    for (name, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters(), strict=True):
        close(a, b, name)
        assert a.requires_grad and b.requires_grad, name
        if a.grad is not None or b.grad is not None:
            close(a.grad, b.grad, f"{name}.grad")
    for (name, a), (_, b) in zip(fast.named_buffers(), ref.named_buffers(), strict=True):
        close(a.float(), b.float(), name)
