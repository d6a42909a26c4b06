"""Microcontroller budgets of a network, known before training: flash (`flash_kb`) and SRAM (`sram_kb`).

Both count an int8 deployment (TFLite Micro / CMSIS-NN style) of the architecture at batch 1; KB = 1024
bytes. Neither needs trained weights: flash depends on the parameter shapes, SRAM on the activation shapes.

Flash (`flash_bytes`): what the weights take in the model file.
- conv and linear layers (`nn.ConvNd`, `nn.ConvTransposeNd`, `nn.Linear`): every weight element 1 byte
  (int8); per output channel a bias (int32, 4 bytes), a scale (float32, 4 bytes) and a zero point
  (int8, 1 byte): weights + 9 bytes per output channel. The bias is counted whether or not the torch
  layer has one: it is where a folded BatchNorm's shift goes, and int8 converters give every conv a bias.
- BatchNorm folds into the conv before it and then has no bytes of its own (its scale multiplies the
  conv's weights, its shift becomes the conv's bias). The rule, read from the module tree without running
  it: a BatchNorm folds when the leaf modules registered just before it are conv/linear layers whose
  output channels add up to its features: one conv (conv -> BN of ConvBNAct, ReLUConvBN, DilConv, the
  stems) or several whose outputs are concatenated (FactorizedReduce's two halves). Any other BatchNorm
  (after a pool, a sum, the raw input) stays a per-channel affine, i.e. the depthwise 1x1 conv with bias
  it equals: 10 bytes per channel (1 weight + 4 bias + 4 scale + 1 zero point).
- the parameters of any other module (attention projections, LayerNorm): a tensor of two or more
  dimensions is a weight matrix (1 byte per element + 5 bytes per row for its scale and zero point),
  a vector 4 bytes per element (int32 biases, float32 norm parameters).
- not counted: the per-tensor scale and zero point of each activation (a few bytes per layer), the
  graph itself, the runtime's code.

SRAM (`sram_bytes`, `activation_steps`): the peak activation memory of an int8 inference that runs one op
after another (a layer-by-layer schedule), 1 byte per activation element. The network runs once on a
zero input of shape (1, *input_shape) in eval mode while a torch function mode records every op in the
order it runs, with the tensors it reads and writes. This sees the network as it executes (python
control flow, skip connections held across blocks, ops written as functions) with no tracing limits.
Every recorded op is a step; a buffer (a tensor's storage) is alive from the step that writes it to the
last step that reads it, and the SRAM of a step is the sum of the buffers alive during it: the op's
inputs and outputs, plus every tensor written earlier that a later op still reads (a residual's skip
tensor, a DARTS cell's states until the cell's concatenation). The peak is the largest such sum. Rules:
- the network input is alive from the first step until its last reader; the output until the last step.
- views do not allocate: an output that shares its storage with an input (reshape, flatten, view,
  slicing, squeeze, an in-place op) is the same buffer; so are copies that a runtime would not make
  (`clone`, `contiguous`, `dropout` at inference, a `pad` of zero width).
- in place: a unary element-wise op (an activation, BatchNorm, arithmetic with a constant) runs on its
  input's buffer when no later op reads that buffer (this is also what a BN folded into its conv and an
  activation fused into it cost); otherwise it writes a new buffer. Ops of two activations (the add of a
  residual or a cell node, the multiply of a squeeze-excite gate) and every other op (conv, linear, pool,
  concatenation, mean) write a new buffer while their inputs are alive.
- weights, buffers of the model and views of them are not activations; neither are tensors made from no
  activation (constants a converter folds into flash).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["flash_bytes", "flash_kb", "sram_bytes", "sram_kb", "activation_steps", "Step", "folded_batchnorms",
           "counted_metrics"]

KB = 1024
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_PER_CHANNEL = 4 + 4 + 1  # int32 bias, float32 scale, int8 zero point
_PER_ROW = 4 + 1  # float32 scale, int8 zero point of a weight matrix's row


def _out_channels(module: nn.Module) -> int:
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)  # type: ignore[arg-type]


def folded_batchnorms(model: nn.Module) -> set[nn.Module]:
    """The BatchNorms that fold into the conv/linear layers registered just before them (see the module's
    docstring): their output channels add up to the BatchNorm's features."""
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    folded: set[nn.Module] = set()
    for i, module in enumerate(leaves):
        if not isinstance(module, _BNS):
            continue
        total, j = 0, i - 1
        while j >= 0 and isinstance(leaves[j], _CONVS) and total < module.num_features:
            total += _out_channels(leaves[j])
            j -= 1
        if total == module.num_features:
            folded.add(module)
    return folded


def flash_bytes(model: nn.Module) -> int:
    """Bytes of the int8 model's weights, biases and quantization parameters (see the module's docstring)."""
    folded = folded_batchnorms(model)
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        if isinstance(module, _CONVS):
            if any(p is module.weight for p in own):  # a weight shared by two layers is stored once
                total += module.weight.numel() + _PER_CHANNEL * _out_channels(module)
        elif isinstance(module, _BNS):
            if module not in folded:
                total += (1 + _PER_CHANNEL) * module.num_features
        else:
            for p in own:
                total += (p.numel() + _PER_ROW * p.shape[0]) if p.dim() >= 2 else 4 * p.numel()
    return total


def flash_kb(model: nn.Module) -> float:
    """Flash of the int8 model in KB (1024 bytes): `flash_bytes(model) / 1024`."""
    return flash_bytes(model) / KB


# ------------------------------------------------------------------------------------------------ SRAM

# unary element-wise ops: in place on their input when nothing reads it later
_ELEMENTWISE = frozenset({
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu",
    "gelu", "silu", "mish", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish", "hardsigmoid", "softplus",
    "batch_norm", "instance_norm", "clamp", "clamp_", "clip", "abs", "neg", "exp",
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "__add__", "__radd__", "__iadd__", "__sub__",
    "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__", "__truediv__", "__rtruediv__", "__itruediv__"})
# copies of their input that a runtime does not make: the same buffer
_NO_COPY = frozenset({"clone", "contiguous", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                      "feature_alpha_dropout", "detach", "float", "to", "type_as", "pad0"})


@dataclass(frozen=True)
class Step:
    """One op of the schedule: its torch name, the bytes it wrote to a new buffer (0: a view or in place),
    and the bytes alive while it runs (its inputs and outputs and every tensor still needed later); `inside`:
    the index in `activation_steps`' `marks` of the innermost marked module running it (-1: none)."""

    op: str
    new: int
    live: int
    inside: int = -1


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class _Record(TorchFunctionMode):
    """Every torch function called by the forward pass (the outermost call only: the mode is off inside
    the call it records), with its tensor arguments and results; keeps them alive so that storages are
    never reused during the run."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, list[torch.Tensor], list[torch.Tensor]]] = []
        # (ops recorded so far, mark index, True when it starts / False when it returns), in call order
        self.marks: list[tuple[int, int, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = list(_tensors(out))
        if outs:
            name = getattr(func, "__name__", str(func))
            if name == "pad" and not any(kwargs.get("pad", args[1] if len(args) > 1 else (1,))):
                name = "pad0"  # a pad of zero width: a copy
            self.ops.append((name, list(_tensors((args, kwargs))), outs))
        return out


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _size(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes() // max(1, t.element_size())  # elements = int8 bytes


class _Buffers:
    """Activation buffers: union of storages that are one buffer (views, no-copies, in-place ops)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, key: int) -> int:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def add(self, key: int, size: int) -> None:
        self.parent[key], self.size[key] = key, size

    def join(self, key: int, into: int) -> None:
        self.parent[key] = self.find(into)


def _record(model: nn.Module, input_shape: Sequence[int],
            marks: Sequence[nn.Module] = ()) -> tuple[_Record, torch.Tensor, list[torch.Tensor]]:
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    recorder = _Record()
    hooks = [h for i, m in enumerate(marks) for h in (
        m.register_forward_pre_hook(lambda *_, i=i: recorder.marks.append((len(recorder.ops), i, True))),
        m.register_forward_hook(lambda *_, i=i: recorder.marks.append((len(recorder.ops), i, False))))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            out = model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return recorder, x, list(_tensors(out))


def _inside(recorder: _Record) -> list[int]:
    """Per recorded op, the innermost marked module running it (-1: none)."""
    inside: list[int] = []
    stack: list[int] = []
    events = iter([*recorder.marks, (len(recorder.ops) + 1, -1, False)])
    count, i, start = next(events)
    for k in range(len(recorder.ops)):
        while count <= k:  # the marks that started or returned before op k
            if start:
                stack.append(i)
            else:
                stack.remove(i)
            count, i, start = next(events)
        inside.append(stack[-1] if stack else -1)
    return inside


def activation_steps(model: nn.Module, input_shape: Sequence[int], marks: Sequence[nn.Module] = ()) -> list[Step]:
    """The int8 schedule of one inference at batch 1 (see the module's docstring), one `Step` per op; each
    step says which of the `marks` (modules, each run at most once) runs it (`Step.inside`)."""
    recorder, x, outputs = _record(model, input_shape, marks)
    inside = _inside(recorder)
    weights = {_key(t) for t in [*model.parameters(), *model.buffers()]}
    buffers = _Buffers()
    buffers.add(_key(x), _size(x))
    # pass 1: which buffer each op reads and writes (views and no-copies join their input's buffer)
    steps: list[tuple[str, set[int], list[int], list[int]]] = []  # name, read, written keys, unary input
    where: list[int] = []  # the mark running each step
    for k, (name, ins, outs) in enumerate(recorder.ops):
        read = {_key(t) for t in ins if _key(t) in buffers.parent}
        written: list[int] = []
        for t in outs:
            key = _key(t)
            if key in weights or key == 0:
                continue
            if key in buffers.parent:  # a view or an in-place op: the same storage
                continue
            if not read:  # made from no activation: a constant
                weights.add(key)
                continue
            buffers.add(key, _size(t))
            if name in _NO_COPY and len(read) == 1:
                buffers.join(key, next(iter(read)))
            else:
                written.append(key)
        unary = [next(iter(read))] if name in _ELEMENTWISE and len(read) == 1 and len(written) == 1 else []
        if read or written:
            steps.append((name, read, written, unary))
            where.append(inside[k])
    # pass 2: the last reader of each storage, then in-place element-wise ops in execution order
    last_read: dict[int, int] = {}
    for s, (_, read, _, _) in enumerate(steps):
        for key in read:
            last_read[key] = s
    for t in outputs:
        if _key(t) in buffers.parent:
            last_read[_key(t)] = len(steps)
    members: dict[int, list[int]] = {}  # buffer (its root storage) -> the storages that are it
    for key in buffers.parent:
        members.setdefault(buffers.find(key), []).append(key)
    written_at: dict[int, int] = {}  # buffer -> the step that writes it (the input: none, alive from step 0)
    for s, (_, _, written, unary) in enumerate(steps):
        for key in written:
            if unary:
                source = buffers.find(unary[0])
                last = max(last_read.get(k, -1) for k in members[source])
                if last <= s and buffers.size[key] <= buffers.size[source]:  # nothing reads the input later
                    buffers.join(key, source)  # in place: the output takes over the input's buffer
                    members[source] += members.pop(key)
                    continue
            written_at[key] = s
    if not steps:  # a network of no op: its input is its output
        return [Step("input", 0, buffers.size[buffers.find(_key(x))])]
    live, new = [0] * len(steps), [0] * len(steps)
    for root, keys in members.items():  # alive from the step that writes it to its last reader
        start = written_at.get(root, 0)
        end = min(len(steps) - 1, max([start] + [last_read.get(k, start) for k in keys]))
        for s in range(start, end + 1):
            live[s] += buffers.size[root]
        if root in written_at:
            new[start] += buffers.size[root]
    return [Step(name, new[s], live[s], where[s]) for s, (name, _, _, _) in enumerate(steps)]


def sram_bytes(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Peak activation bytes of an int8 inference at batch 1 under a layer-by-layer schedule."""
    return max(step.live for step in activation_steps(model, input_shape))


def sram_kb(model: nn.Module, input_shape: Sequence[int]) -> float:
    """`sram_bytes(model, input_shape) / 1024`: the peak SRAM of the activations in KB."""
    return sram_bytes(model, input_shape) / KB


def counted_metrics(model: nn.Module, input_shape: Sequence[int], names: Iterable[str]) -> dict[str, float]:
    """The metrics counted from the built network alone, for those of `names` that are: `params`, `macs`,
    `flash_kb`, `sram_kb` (what a trial counts before training, what `check_reachable` and the samplers'
    limits count)."""
    from nasopt.measure._metrics import count_macs, count_params

    names = set(names)
    counters = {"params": lambda: float(count_params(model)),
                "macs": lambda: float(count_macs(model, input_shape)),
                "flash_kb": lambda: flash_kb(model),
                "sram_kb": lambda: sram_kb(model, input_shape)}
    return {name: count() for name, count in counters.items() if name in names}
