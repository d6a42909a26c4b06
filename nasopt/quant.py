"""Quantization-aware training: fake int8 quantization attached to a model for its last epochs.

`FakeQuant(model)` makes the training forward pass see the int8 network that onnxruntime's static
quantization (QDQ, per-channel int8 weights, MinMax calibration) makes of the exported model, so the
weights learn to sit on its grid (`TrainConfig(qat_epochs=k)` attaches it for the last k epochs):

- weights of every conv (1-3D) and linear layer: int8 per output channel, symmetric (scale = max|w| / 127
  over the channel, zero point 0, levels -127..127: onnxruntime's symmetric int8 range).
- BatchNorm needs no folding here. The export (eval mode, then onnxruntime's pre-processing) folds a BatchNorm
  into the conv that feeds it, w_folded = w * s with s = gamma / sqrt(running_var + eps) one number per output
  channel, and the quantizer rounds w_folded. Per-channel symmetric rounding commutes with that scale:
  fq(w * s) = fq(w) * s for any s of either sign (the channel's scale is max|w * s| / 127 = |s| max|w| / 127,
  and the grid is symmetric), so rounding the conv's own weight in training is rounding exactly the folded
  weight that ships, whatever the BatchNorm's statistics are by then (a per-tensor weight scale would need the
  folded forward of Jacob et al. 2018; nasopt's deployment quantizer is per channel).
- activations where a weight layer reads them (the input of every conv and linear): per tensor,
  asymmetric 8-bit, 256 levels with zero exact (onnxruntime's int8 with a zero point is the same grid as
  uint8 with one), the range [min(lo, 0), max(hi, 0)] of a moving average (momentum `MOMENTUM`) of each
  training batch's min and max, started at the first batch's.
- the network's output, on the same per-tensor grid with its own range: onnxruntime quantizes the graph's
  output tensor too (a QuantizeLinear/DequantizeLinear pair after the last conv or linear), so a classification
  or dense head's logits reach the argmax on 256 levels. On the shipped segmentation study that rounding is most
  of the int8 model's loss of mIoU (two classes' logits tied on one level, the argmax taking the first); with it
  the calibrated simulation's mIoU is within 0.0005 of onnxruntime's, without it 0.004-0.006 off.
- gradients pass straight through the rounding inside the range and are zero outside it (the
  straight-through estimator of `torch.fake_quantize_per_*_affine`).

Approximations (onnxruntime quantizes more tensors than these): the outputs of adds, pools and activations that
no weight layer reads next (the network's output aside), and a conv's output before an activation that does not
follow it directly, are not rounded here; biases (int32 at scale input x weight) are left in float;
calibration takes the absolute min/max over a few batches where the moving average here forgets; onnxruntime's
integer kernels round and saturate in their own ways. On trained digits CNNs the fake-quantized logits are
closer to onnxruntime's int8 logits than the float ones are (tests/test_qat.py).

`paused()` runs the float network (validation while fake quantization is on); `calibrate(batches)` sets the
activation ranges as MinMax calibration does (simulating the int8 model of a trained network in torch);
`remove()` leaves the plain fp32 model with its original parameters (same objects, same state-dict keys).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["FakeQuant", "fake_quantize_weight", "fake_quantize_activation", "MOMENTUM"]

MOMENTUM = 0.05  # of the activation ranges' moving average: a fine-tune of a few epochs tracks its weights
_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_QMAX_WEIGHT = 127  # symmetric int8: -127..127
_LEVELS = 255  # asymmetric 8-bit activations: 0..255 (int8 -128..127 with its zero point: the same grid)


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, ...) rounded to int8 per output channel, symmetric, with the straight-through gradient."""
    w = weight.float()
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = (amax / _QMAX_WEIGHT).clamp_min(1e-12)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -_QMAX_WEIGHT, _QMAX_WEIGHT).to(weight.dtype)


def fake_quantize_activation(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """`x` rounded per tensor to 256 levels over [min(lo, 0), max(hi, 0)] (zero exact), straight-through."""
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = ((hi - lo) / _LEVELS).clamp_min(1e-8).reshape(1).float()
    zero = (-lo / scale).round().clamp(0, _LEVELS).reshape(1).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, 0, _LEVELS).to(x.dtype)


class _Switch:
    on = True


class _Weight(nn.Module):
    """The parametrization of a weight layer's `weight` while fake quantization is attached."""

    def __init__(self, switch: _Switch) -> None:
        super().__init__()
        self.switch = switch

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(weight) if self.switch.on else weight


class _Range:
    """The moving-average min and max of the tensor a weight layer reads (updated in training mode)."""

    def __init__(self, switch: _Switch) -> None:
        self.switch = switch
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def rounded(self, module: nn.Module, x: Any) -> torch.Tensor | None:
        """`x` on the int8 grid of the range (first updated from `x` when `module` trains); None leaves it."""
        if not self.switch.on or not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return None
        if module.training:
            lo, hi = torch.aminmax(x.detach().float())
            if self.lo is None or self.hi is None:
                self.lo, self.hi = lo, hi
            else:
                self.lo = self.lo + MOMENTUM * (lo - self.lo)
                self.hi = self.hi + MOMENTUM * (hi - self.hi)
        if self.lo is None or self.hi is None:  # evaluated before any training step: no range yet
            return None
        return fake_quantize_activation(x, self.lo, self.hi)

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """A forward pre-hook: the layer reads its input rounded."""
        x = self.rounded(module, args[0] if args else None)
        return None if x is None else (x, *args[1:])

    def output(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> torch.Tensor | None:
        """A forward hook: the module's output rounded (a tuple or other output is left as it is)."""
        return self.rounded(module, out)


class FakeQuant:
    """Fake int8 quantization attached to `model` (see the module's docstring); inert until `attach`.

    `attach()` puts a weight parametrization and an input observer on every conv and linear layer; `paused()`
    runs the float network; `remove()` (safe to call twice, or before `attach`) restores the plain fp32 model.
    Usable as a context manager around a user's own training loop:

        with FakeQuant(model).attach():
            ...  # train: every forward pass is fake-quantized
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.switch = _Switch()
        self.layers: list[nn.Module] = []
        self.ranges: dict[nn.Module, _Range] = {}  # the input of each weight layer
        self.output: _Range | None = None  # the network's output
        self._hooks: list[Any] = []
        self._order: dict[nn.Module, list[str]] = {}

    @property
    def attached(self) -> bool:
        return bool(self.layers)

    def attach(self) -> FakeQuant:
        if self.attached:
            return self
        for module in self.model.modules():
            if not isinstance(module, _WEIGHT_LAYERS) or parametrize.is_parametrized(module):
                continue
            self._order[module] = list(module._parameters)
            parametrize.register_parametrization(module, "weight", _Weight(self.switch))
            self.ranges[module] = _Range(self.switch)
            self._hooks.append(module.register_forward_pre_hook(self.ranges[module]))
            self.layers.append(module)
        if self.layers:  # the network's output: onnxruntime quantizes the graph's output tensor too
            self.output = _Range(self.switch)
            self._hooks.append(self.model.register_forward_hook(self.output.output))
        return self

    def calibrate(self, batches: Iterable[torch.Tensor]) -> FakeQuant:
        """Set every activation range to the min and max over `batches` run through the float network in eval
        mode: the ranges a MinMax calibration of the deployment quantizer finds (BatchNorm statistics untouched)."""
        seen: dict[_Range, tuple[torch.Tensor, torch.Tensor]] = {}

        def observe(where: _Range, x: torch.Tensor) -> None:
            lo, hi = torch.aminmax(x.detach().float())
            old = seen.get(where)
            seen[where] = (lo, hi) if old is None else (torch.minimum(old[0], lo), torch.maximum(old[1], hi))

        hooks = [layer.register_forward_pre_hook(lambda m, args, r=self.ranges[layer]: observe(r, args[0]))
                 for layer in self.layers]
        if self.output is not None:
            out_range = self.output
            hooks.append(self.model.register_forward_hook(
                lambda m, args, out: observe(out_range, out) if isinstance(out, torch.Tensor) else None))
        was = self.model.training
        try:
            self.model.eval()
            with self.paused(), torch.no_grad():
                for x in batches:
                    self.model(x)
        finally:
            self.model.train(was)
            for h in hooks:
                h.remove()
        for where, (lo, hi) in seen.items():
            where.lo, where.hi = lo, hi
        return self

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The float network inside the block (fake quantization stays attached)."""
        was, self.switch.on = self.switch.on, False
        try:
            yield
        finally:
            self.switch.on = was

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        for module in self.layers:
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                # parameters back in their own order (removal appends `weight` after `bias`)
                order = [*self._order.get(module, ()), *module._parameters]
                module._parameters = {k: module._parameters[k] for k in dict.fromkeys(order) if k in module._parameters}
        self._hooks, self.layers, self.ranges, self._order, self.output = [], [], {}, {}, None

    def __enter__(self) -> FakeQuant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
