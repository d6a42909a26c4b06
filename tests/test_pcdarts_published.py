"""PC-DARTS computes what the paper defines (Xu et al., ICLR 2020, eqs. 2-4).

For an edge (i, j) with input x_i of C channels and a sampling mask taking the first C/K of them:
    f_ij(x_i) = shuffle_K( concat( sum_o softmax(alpha_ij)_o * o(x_i[:C/K]),  x_i[C/K:] ) )
(the bypassing channels max-pooled when the edge strides), and each node
    x_j = sum_{i<j} softmax(beta_j)_i * f_ij(x_i)
— the edge weight multiplies the WHOLE edge output, the bypassing channels included.

The test runs the supernet that `DARTS(partial_channels=K)` searches twice on one batch: once as nasopt
computes it, once with every mixed op replaced by the equation above written out plainly (reading the raw
alpha and beta parameters), and compares logits, weight gradients and both kinds of architecture
gradients to float tolerance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasopt.oneshot import DARTS, MixedChooser, MixedOp
from nasopt.oneshot.darts import build_supernet
from nasopt.oneshot.mixed import param_key
from nasopt.search_spaces.darts_cell import DartsCellSpace

pytestmark = pytest.mark.usefixtures("one_thread")


class Task:
    def __init__(self, channels: int, size: int, num_classes: int = 10) -> None:
        self.input_shape, self.num_classes, self.device = (channels, size, size), num_classes, "cpu"


def published_edge(op: MixedOp, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, K: int) -> torch.Tensor:
    """beta * shuffle_K(concat(sum_o softmax(alpha)_o o(x[:C/K]), x[C/K:] pooled if strided)), spelled out."""
    n, c, h, w = x.shape
    sampled, bypass = x[:, : c // K], x[:, c // K:]
    weights = F.softmax(alpha, dim=-1)
    mixed = weights[0] * op.ops[0](sampled)
    for o in range(1, len(op.ops)):
        mixed = mixed + weights[o] * op.ops[o](sampled)
    if mixed.shape[2] != h:
        bypass = F.max_pool2d(bypass, kernel_size=2, stride=2)
    out = torch.cat([mixed, bypass], dim=1)
    n, c, h, w = out.shape
    out = out.view(n, K, c // K, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
    return beta * out


def gradients(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("K", [2, 4])
def test_pc_darts_supernet_matches_the_published_equations(K, monkeypatch):
    torch.manual_seed(0)
    space, task = DartsCellSpace(C=8, layers=3), Task(3, 16)
    strategy = DARTS(partial_channels=K)
    net = build_supernet(space, task, MixedChooser(strategy.partial_channels),
                         edge_normalization=strategy.normalize_edges)
    assert net.edges, "PC-DARTS normalises edges by default"
    with torch.no_grad():  # architecture weights far from uniform, so a wrong scaling shows
        for p in net.arch_parameters():
            p.copy_(torch.randn_like(p))
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        return logits.detach(), gradients(net)

    ours, ours_grads = run()

    def plain_forward(op: MixedOp, inputs: torch.Tensor) -> torch.Tensor:
        node, i = net.edges[op.name]
        beta = F.softmax(net.betas[param_key(node)], dim=-1)[i]
        return published_edge(op, inputs, net.alphas[param_key(op.name)], beta, K)

    monkeypatch.setattr(MixedOp, "forward", plain_forward)
    published, published_grads = run()

    assert torch.allclose(ours, published, atol=1e-5, rtol=1e-4), (ours - published).abs().max()
    assert ours_grads.keys() == published_grads.keys()
    assert any(name.startswith("alphas.") for name in ours_grads)
    assert any(name.startswith("betas.") for name in ours_grads)
    for name, grad in ours_grads.items():
        assert torch.allclose(grad, published_grads[name], atol=1e-5, rtol=1e-4), \
            (name, (grad - published_grads[name]).abs().max())


def test_factorized_reduce_on_even_sizes_reads_a_view_and_on_odd_sizes_pads():
    from nasopt.ops import FactorizedReduce

    torch.manual_seed(0)
    op = FactorizedReduce(4, 6).eval()
    for size in (8, 7):
        x = torch.randn(2, 4, size, size)
        r = F.relu(x)
        padded = F.pad(r, [0, size % 2, 0, size % 2])[:, :, 1:, 1:]
        expected = op.bn(torch.cat([op.conv_1(r), op.conv_2(padded)], dim=1))
        out = op(x)
        assert out.shape == (2, 6, (size + 1) // 2, (size + 1) // 2)
        assert torch.allclose(out, expected, atol=1e-6)
