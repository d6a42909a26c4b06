"""Export a trained architecture for use outside nasopt, and load it back.

An export directory holds, for one architecture:

- `arch.json`      the space config, the decisions (the trial's params), the printed form, the genotype
                   for cell spaces, the input shape, the number of classes (outputs) and the task's kind
                   (classify, regress or dense; absent in older exports: classify) with its target shape
- `model.pt`       the state dict (tensors only; `torch.load(..., weights_only=True)` reads it)
- `model.ts`       TorchScript (traced in eval mode): `torch.jit.load` runs it without nasopt
- `model.onnx`     ONNX (opset 17, dynamic batch axis): onnxruntime runs it
- `model.int8.onnx` with `--int8` only: the int8 QDQ graph of model.onnx (`nasopt.measure._int8`: onnxruntime's
                   static quantization calibrated on training samples), checked against model.onnx on the
                   validation split; the manifest's `int8` says how it was made, where the scales are and how
                   often int8 and fp32 predict the same class
- `manifest.json`  objectives, params, MACs, latency with provenance, the weights' origin, the input
                   (the raw data's source, units and range, and the normalisation after it), the outputs
                   check of the three formats, study, trial, versions, file hashes

`load_model(DIR)` rebuilds the module from `arch.json` + `model.pt`. Exporting checks that the
TorchScript and ONNX files give the module's outputs on a random batch before anything is kept, and a
directory is written whole or not at all (a temporary sibling renamed into place).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasopt.errors import UserError
from nasopt.export._rebuild import ShapeTask, space_from_config, task_kind
from nasopt.measure._int8 import INT8_FILE, Calibration, export_int8, need_int8
from nasopt.measure._onnx import OPSET, need_onnx, quiet, run_onnx, write_onnx

__all__ = ["FORMAT", "write_export", "load_model", "read_arch", "check_outputs", "versions", "run_onnx", "write_files"]


FORMAT = "nasopt-export/1"
FILES = ("arch.json", "model.pt", "model.ts", "model.onnx", "manifest.json")
# formats agree to float32 round-off: |a - b| <= ATOL + RTOL * |a|
ATOL, RTOL = 1e-4, 1e-3


def versions() -> dict[str, str | None]:
    import nasopt

    out: dict[str, str | None] = {"nasopt": nasopt.__version__, "torch": torch.__version__,
                                  "python": platform.python_version()}
    for name in ("onnx", "onnxruntime", "optuna"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def _example(input_shape: tuple[int, ...], batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _close(ref: torch.Tensor, other: torch.Tensor) -> bool:
    return ref.shape == other.shape and bool(((ref - other).abs() <= ATOL + RTOL * ref.abs()).all())


def check_outputs(directory: Path | str, model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Max |difference| of the TorchScript and ONNX files' outputs from `model`'s on a random batch of 3
    (a batch size the files were not traced with); raises when a format disagrees."""
    directory = Path(directory)
    x = _example(input_shape, batch=3, seed=1)
    with torch.no_grad(), quiet():
        ref = model.eval()(x)
        scripted = torch.jit.load(str(directory / "model.ts"), map_location="cpu")(x)
    onnx_out = run_onnx(directory / "model.onnx", x)
    result = {"torchscript_max_abs_diff": _max_diff(ref, scripted), "onnx_max_abs_diff": _max_diff(ref, onnx_out),
              "batch": 3, "atol": ATOL, "rtol": RTOL}
    for name, out in (("TorchScript", scripted), ("ONNX", onnx_out)):
        if not _close(ref, out):
            raise RuntimeError(f"the exported {name} file does not reproduce the model's outputs "
                               f"(max |diff| {_max_diff(ref, out):.3g}); please report this architecture")
    return result


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_files(folder: Path, model: nn.Module, arch: Mapping[str, Any], manifest: Mapping[str, Any],
                int8: tuple[Any, Calibration] | None = None) -> None:
    """Write the five files of one export into the (new, empty) `folder`; with `int8` = (the task with its
    data, the calibration), the int8 graph too (`nasopt.measure._int8.export_int8`)."""
    model = model.cpu().eval()
    input_shape = tuple(int(v) for v in arch["input_shape"])
    x = _example(input_shape)
    _write_json(folder / "arch.json", {"format": FORMAT, **arch})
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, folder / "model.pt")
    with torch.no_grad(), quiet():
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.jit.save(traced, str(folder / "model.ts"))
    exporter = write_onnx(model, x, folder / "model.onnx")
    check = check_outputs(folder, model, input_shape)
    quantized = {"int8": export_int8(folder, *int8)} if int8 is not None else {}
    files = {name: _sha256(folder / name) for name in (*FILES, INT8_FILE) if name != "manifest.json"
             and (folder / name).exists()}
    _write_json(folder / "manifest.json", {"format": FORMAT, **manifest, "check": check, **quantized,
                                           "formats": {"torchscript": "torch.jit.trace (eval mode)",
                                                       "onnx": f"{exporter}, opset {OPSET}, dynamic batch"},
                                           "files": files, "versions": versions(),
                                           "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def write_export(target: Path | str, items: Mapping[str, tuple[nn.Module, Mapping[str, Any], Mapping[str, Any]]],
                 *, force: bool = False, index: Mapping[str, Any] | None = None,
                 int8: Mapping[str, tuple[Any, Calibration]] | None = None) -> Path:
    """Write exports atomically: `items` maps a subfolder name ("" = the target itself) to
    (model, arch, manifest), `int8` the subfolders that get an int8 graph to (task, calibration). An existing
    target is refused unless `force`, and it is replaced only after every file has been written and
    checked; on any failure nothing is left behind."""
    need_onnx()
    if int8:
        need_int8()
    target = Path(target)
    if target.exists() and not force:
        raise UserError(f"{target} exists; pass --force to replace it, or choose another -o DIR")
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file, not an export directory; choose another -o DIR")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would survive the rename
    try:
        for sub, (model, arch, manifest) in items.items():
            folder = tmp / sub if sub else tmp
            folder.mkdir(parents=True, exist_ok=True)
            write_files(folder, model, arch, manifest, (int8 or {}).get(sub))
        if index is not None:
            _write_json(tmp / "index.json", {"format": FORMAT, **index})
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "previous")
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_arch(directory: Path | str) -> dict[str, Any]:
    """The `arch.json` of an export directory, checked."""
    path = Path(directory) / "arch.json"
    if not path.is_file():
        raise UserError(f"{directory} is not a nasopt export (no arch.json); export one with `nasopt export`")
    try:
        arch = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is corrupt ({type(e).__name__}); export the trial again") from None
    missing = [k for k in ("space", "params", "input_shape", "num_classes") if k not in arch]
    if not isinstance(arch, dict) or arch.get("format") != FORMAT or missing:
        raise UserError(f"{path} is not a {FORMAT} arch file (missing {', '.join(missing) or 'format'}); "
                        "export the trial again")
    return arch


def load_model(directory: Path | str, *, space: Any = None, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the exported module from `arch.json` and `model.pt` (read with `weights_only=True`), in
    eval mode on `device`. A space that is not one of nasopt's own is passed as `space=`."""
    directory = Path(directory)
    arch = read_arch(directory)
    if space is None:
        if not arch["space"]:
            raise UserError(f"{directory}/arch.json names no rebuildable space; pass space=... (the study file's space)")
        space = space_from_config(arch["space"])
    task = ShapeTask("export", tuple(int(v) for v in arch["input_shape"]), int(arch["num_classes"]), **task_kind(arch))
    try:
        model = space.build(dict(arch["params"]), task)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{directory}: the space cannot build the exported architecture ({type(e).__name__}: {e})") from None
    path = directory / "model.pt"
    try:
        with open(path, "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise UserError(f"{directory} has no model.pt; export the trial again") from None
    except Exception as e:
        raise UserError(f"{path} is corrupt or does not fit the architecture ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''}); export the trial again") from None
    return model.to(device).eval()
