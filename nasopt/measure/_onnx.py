"""A network as an ONNX graph, run in onnxruntime: the one writer of ONNX files (`write_onnx`, used by the
export and by the int8 metrics) and the sessions that run them on the CPU (`ort_session`, `run_onnx`).

onnx and onnxruntime are optional (`pip install 'nasopt[export]'`): `need_onnx` says so in one line, and
nothing here imports them before it is called.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasopt.errors import UserError

__all__ = ["OPSET", "quiet", "need_onnx", "write_onnx", "ort_session", "run_onnx"]

OPSET = 17


def need_onnx(what: str = "exporting ONNX", modules: tuple[str, ...] = ("onnx", "onnxruntime")) -> None:
    """Import `modules`, else a UserError naming the extra that installs them."""
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            raise UserError(f"{what} needs the `{name}` package: pip install 'nasopt[export]'") from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.jit and the ONNX exporter warn about their own deprecation on every call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def write_onnx(model: nn.Module, x: torch.Tensor, path: Path | str) -> str:
    """Write `model` (eval mode, on the CPU, as `x`) as ONNX with a dynamic batch axis, input "input" and
    output "logits"; returns which exporter wrote it."""
    with quiet():
        try:  # the TorchScript-based exporter: fast and exact for CNNs while torch still ships it
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=OPSET, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            return "torch.onnx (torchscript)"
        except Exception as first:  # removed or failing: the torch.export-based one (needs onnxscript)
            log = logging.getLogger("torch.onnx")
            level = log.level
            log.setLevel(logging.ERROR)  # its note that opset 17 is converted from 18
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=OPSET,
                                      input_names=["input"], output_names=["logits"],
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
            except Exception as second:  # both failed: name both reasons (the second's is in its cause)
                raise RuntimeError(f"torchscript exporter: {_reason(first)}; dynamo exporter: "
                                   f"{_reason(second.__cause__ or second)}") from second
            finally:
                log.setLevel(level)
            return "torch.onnx (dynamo)"


def _reason(e: BaseException) -> str:
    """`Type: first line` of an exception, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


def ort_session(path: Path | str, threads: int | None = None, *, fused: bool = True) -> Any:
    """An onnxruntime session of the file on the CPU provider with every graph optimisation (a QDQ graph
    runs as fused int8 kernels); `threads` intra-op threads (None: onnxruntime's default), one inter-op.
    `fused=False`: no graph optimisation, so a QDQ graph runs as written (dequantize, the fp32 op, quantize
    again): the int8 model's arithmetic exactly, whatever int8 kernels this CPU has."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path | str | Any, x: torch.Tensor) -> torch.Tensor:
    """The ONNX file's (or session's) output for `x`, as a CPU tensor."""
    session: Any = path if hasattr(path, "run") else ort_session(path)
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})[0])
