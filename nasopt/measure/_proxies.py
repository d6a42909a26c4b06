"""Zero-cost proxies: scores of an untrained network from one minibatch, higher meaning "likely to train well".

Which, and why (each is computed the way its paper's code does, on a copy of the network in train mode):

- `naswot` (Mellor et al., "Neural Architecture Search without Training", ICML 2021): every activation unit
  gives each sample of the batch a bit (its input > 0); K[i, j] = number of units where samples i and j agree;
  the score is log|K|. The proxy that needs no labels and no gradient. A ReLU's bit is its input's sign;
  for other activations (SiLU, GELU, hard-swish, ...) the same bit is read from their input, and a network
  without activation modules (functional activations, a linear network) gives the sign of every conv and
  linear output. K is a sum of Gram matrices of 0/1 codes, so a non-singular K has an integer determinant
  >= 1 and a log >= 0: a singular K (two samples the network cannot tell apart) scores 0, below them all.
- `synflow` (Tanaka et al., NeurIPS 2020; as a NAS proxy Abdelfattah et al., "Zero-Cost Proxies for
  Lightweight NAS", ICLR 2021): sum over conv/linear weights of |w * dR/dw|, R = sum of the output for an
  all-ones input of batch 1, every parameter replaced by its absolute value, in float64 (the product of
  path weights overflows float32). Data-independent. BatchNorm is removed (identity), as in the zero-cost
  paper's `synflow` (their `bn=False` copy): at batch 1 of a constant input it would zero every path.
- `snip` (Lee et al., ICLR 2019): sum of |w * dL/dw| over conv/linear weights, L the task's loss on the batch;
  one of the two best loss-based proxies of the zero-cost paper, and it works for any task with a loss.
- `grad_norm`: sum over conv/linear layers of ||dL/dw||_2 (the zero-cost paper's baseline, as cheap as snip).
- `jacob_cov` (Mellor et al., 2020 version; in the zero-cost paper's table): the eigenvalues v of the
  correlation matrix of the per-sample input gradients of the summed output, -sum(log(v + k) + 1 / (v + k)),
  k = 1e-5; label-free, correlates with synflow least, so it adds the most to it.

Loss-based proxies use the task's own loss and output shape (`nasopt.scoring.task_loss`, `shaped`), so
regression and dense tasks are scored like classification. Every proxy runs on a deep copy under
`torch.random.fork_rng`: the network's weights and every random number generator are left as they were, so
training after computing proxies is identical to training without them.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from nasopt.errors import UserError
from nasopt.scoring import scalar_loss, shaped, task_loss

__all__ = ["PROXIES", "zero_cost", "proxy_batch", "naswot", "synflow", "snip", "grad_norm", "jacob_cov"]

# proxy name -> what it is (every proxy is higher-is-better)
PROXIES: dict[str, str] = {
    "naswot": "zero-cost: log-determinant of the binary activation-code kernel over a batch (Mellor et al. 2021)",
    "synflow": "zero-cost: synaptic flow of |weights| on an all-ones input, float64, BN removed (Tanaka et al. 2020)",
    "snip": "zero-cost: sum |w * dL/dw| of the task's loss on one batch at initialisation (Lee et al. 2019)",
    "grad_norm": "zero-cost: sum of per-layer gradient norms of the task's loss at initialisation",
    "jacob_cov": "zero-cost: -sum(log(v+k) + 1/(v+k)) over the input-Jacobian correlation's eigenvalues (Mellor 2020)",
}
# the activations whose input's sign is a unit's bit for NASWOT
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus)
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def check_names(names: Iterable[str]) -> None:
    for name in names:
        if name not in PROXIES:
            raise UserError(f"unknown zero-cost proxy {name!r}; known proxies: {', '.join(PROXIES)}")


def proxy_batch(task: Any, *, batch_size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch of `task` (up to `batch_size` samples), the same for the same `seed`."""
    generator = torch.Generator().manual_seed(seed)
    n = max(2, min(batch_size, len(task.train)))
    for x, y in task.train.batches(n, shuffle=True, generator=generator):
        return x, y
    raise UserError(f"task {getattr(task, 'name', '')!r} has no training batch to score zero-cost proxies on")


@contextlib.contextmanager
def _scoring(model: nn.Module) -> Iterator[nn.Module]:
    """A deep copy of the network in train mode, the random state forked: nothing leaks back to `model`."""
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)  # dropout/drop-path of the copy: the same draw for every call
        net = copy.deepcopy(model)
        net.train()
        yield net


def _weights(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, _WEIGHTED) and isinstance(m.weight, nn.Parameter)]


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log|K| of the binary activation codes of the batch `x` (N samples, N x N kernel)."""
    with _scoring(model) as net:
        units: list[nn.Module] = [m for m in net.modules() if isinstance(m, _ACTIVATIONS)]
        use_output = not units  # no activation module: the sign of every conv/linear output
        if use_output:
            units = [m for m in net.modules() if isinstance(m, _WEIGHTED)]
        K = torch.zeros(len(x), len(x), dtype=torch.float64, device=x.device)

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            t = output if use_output else inputs[0]
            c = (t.detach().reshape(len(x), -1) > 0).double()  # (N, units)
            K.add_(c @ c.t() + (1 - c) @ (1 - c).t())

        handles = [m.register_forward_hook(hook) for m in units]
        try:
            with torch.no_grad():
                net(x)
        finally:
            for h in handles:
                h.remove()
    sign, logdet = torch.linalg.slogdet(K.cpu())
    return float(logdet) if sign > 0 else 0.0


def synflow(model: nn.Module, input_shape: Sequence[int]) -> float:
    """sum |w * dR/dw| over conv/linear weights, R = sum(net(1)) with |parameters|, float64, BN removed."""
    with _scoring(model) as net:
        for module in list(net.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    setattr(module, child_name, nn.Identity())
        net.double().eval()  # eval: no dropout; BN is gone, so nothing else depends on the mode
        with torch.no_grad():
            for p in net.parameters():
                p.abs_()
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        out = net(torch.ones(1, *input_shape, dtype=torch.float64, device=device))
        weights = _weights(net)
        if not weights or not out.requires_grad:
            return 0.0
        grads = torch.autograd.grad(out.sum(), weights, allow_unused=True)
        return _saliency(weights, grads)


def _saliency(weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> float:
    with torch.no_grad():  # sum |w * g| (float64 for synflow)
        return float(sum(((w * g).abs().sum() for w, g in zip(weights, grads, strict=True) if g is not None),
                         torch.zeros(())))


def _loss_grads(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Any, what: str
                ) -> tuple[list[nn.Parameter], list[torch.Tensor | None]]:
    weights = _weights(net)
    if not weights:
        raise UserError(f"zero-cost proxy {what!r} needs conv or linear weights, but {type(net).__name__} has none; "
                        "use naswot or synflow")
    loss = scalar_loss(task_loss(task)(shaped(net(x), task), y), f"scoring the proxy {what!r}")
    if not loss.requires_grad:
        raise UserError(f"zero-cost proxy {what!r} needs the loss's gradient, but the loss of "
                        f"{type(net).__name__} has none; use naswot")
    return weights, list(torch.autograd.grad(loss, weights, allow_unused=True))


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Any) -> float:
    """sum |w * dL/dw| over conv/linear weights, L = the task's loss on (x, y)."""
    with _scoring(model) as net:
        weights, grads = _loss_grads(net, x, y, task, "snip")
        return _saliency(weights, grads)


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Any) -> float:
    """sum over conv/linear layers of ||dL/dw||_2, L = the task's loss on (x, y)."""
    with _scoring(model) as net:
        _, grads = _loss_grads(net, x, y, task, "grad_norm")
        return float(sum(g.norm() for g in grads if g is not None))


def jacob_cov(model: nn.Module, x: torch.Tensor) -> float:
    """-sum(log(v + k) + 1/(v + k)) of the eigenvalues v of the per-sample input-gradient correlation matrix."""
    with _scoring(model) as net:
        x = x.detach().clone().float().requires_grad_(True)
        out = net(x)
        (jac,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    if jac is None:
        raise UserError(f"zero-cost proxy 'jacob_cov' needs the output's gradient with respect to the input, but "
                        f"{type(model).__name__} has none; use naswot")
    j = jac.reshape(len(x), -1).double().cpu()
    j = j - j.mean(1, keepdim=True)
    j = j / j.norm(dim=1, keepdim=True).clamp_min(1e-12)  # a constant row correlates with nothing
    corr = j @ j.t()
    k = 1e-5
    v = torch.linalg.eigvalsh(corr).clamp_min(0.0)
    return float(-(torch.log(v + k) + 1.0 / (v + k)).sum())


def zero_cost(model: nn.Module, names: Iterable[str], x: torch.Tensor, y: torch.Tensor, task: Any
              ) -> dict[str, float]:
    """The proxies called `names` of `model` (untouched) on the batch (x, y) of `task`, rounded to 6 significant
    digits (they vary with float summation order below that)."""
    names = list(dict.fromkeys(names))
    check_names(names)
    run: dict[str, Callable[[], float]] = {
        "naswot": lambda: naswot(model, x),
        "synflow": lambda: synflow(model, task.input_shape),
        "snip": lambda: snip(model, x, y, task),
        "grad_norm": lambda: grad_norm(model, x, y, task),
        "jacob_cov": lambda: jacob_cov(model, x),
    }
    out = {}
    for name in names:
        value = run[name]()
        out[name] = float(f"{value:.6g}") if math.isfinite(value) else value
    return out
