"""Weight inheritance: start a trial from the trained weights of a finished parent.

A space builds its network in a fixed order and asks its chooser at every decision, so a `Recorder`
chooser learns which op each decision got and which module holds it. A child inherits the longest
prefix of its state dict (in build order) whose tensors the parent has with the same name and shape
AND whose preceding decisions, including parameter-free ones such as `skip`, are the parent's: the
layers before the first different decision. Everything after keeps its fresh initialisation. The
parent is the finished trial with stored weights that gives the longest prefix (ties: the more
accurate one). Weights live in Optuna's artifact store beside the study.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.trial import TrialState

from nasopt.keys import DECISIONS_ATTR, WEIGHTS_ATTR

if TYPE_CHECKING:  # torch on first use: `nasopt report` and `nasopt dashboard` find artifacts without it
    import torch
    from torch import nn

__all__ = ["artifact_dir", "Recorder", "matching_prefix", "inherit", "save_weights", "load_weights", "artifact_store_for",
           "WEIGHTS_ATTR", "DECISIONS_ATTR"]



class Recorder:
    """A chooser that builds like `fixed` and records each decision (name, chosen op, module)."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, nn.Module]] = []

    def __call__(self, name: str, candidates: Sequence[str], chosen: str, C_in: int, C_out: int, stride: int,
                 **options: Any) -> nn.Module:
        from nasopt.space import fixed

        module = fixed(name, candidates, chosen, C_in, C_out, stride, **options)
        self.decisions.append((name, chosen, module))
        return module

    @property
    def sequence(self) -> list[list[str]]:
        return [[name, chosen] for name, chosen, _ in self.decisions]

    def preceding(self, model: nn.Module) -> dict[str, int]:
        """For every state-dict key: how many decisions come before it (or contain it) in build order.

        A decision whose module is not in the model (an identity left out) sits right after the
        decision recorded before it.
        """
        order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
        positions, last = [], -1.0
        for _, _, module in self.decisions:
            last = float(order[id(module)]) if id(module) in order else last + 1e-3
            positions.append(last)
        # the key's owner is its innermost module: the largest index among modules whose prefix matches
        innermost: dict[str, int] = {}
        for i, (prefix, module) in enumerate(model.named_modules()):  # pre-order: inner modules come later
            for key in module.state_dict(keep_vars=True):
                innermost[f"{prefix}.{key}" if prefix else key] = i
        return {key: sum(p <= pos for p in positions) for key, pos in innermost.items()}


def artifact_dir(storage_url: str | None, directory: str | None = None) -> str:
    """Where a study's artifacts live — the one rule, for the runner and every command: `directory`, else
    `<name>.artifacts/` beside an SQLite or journal file, else `./nasopt-artifacts`."""
    if directory is not None:
        return directory
    url = storage_url or "sqlite:///nasopt.db"
    if url.startswith("sqlite:///") and url[len("sqlite:///"):] not in ("", ":memory:"):
        return str(Path(url[len("sqlite:///"):].split("?", 1)[0]).with_suffix(".artifacts"))
    if url.startswith("journal:///") and url[len("journal:///"):]:
        from nasopt.storage import journal_path

        return str(Path(journal_path(url) or "nasopt.log").with_suffix(".artifacts"))
    return "nasopt-artifacts"


def artifact_store_for(storage_url: str | None, directory: str | None = None) -> FileSystemArtifactStore:
    """The artifact store of a study (`artifact_dir`), its folder created."""
    directory = artifact_dir(storage_url, directory)
    os.makedirs(directory, exist_ok=True)
    return FileSystemArtifactStore(directory)


def matching_prefix(child: Mapping[str, torch.Tensor], parent: Mapping[str, torch.Tensor],
                    preceding: Mapping[str, int] | None = None, child_decisions: Sequence[Sequence[str]] = (),
                    parent_decisions: Sequence[Sequence[str]] = ()) -> list[str]:
    """Names of the child's leading state-dict entries that the parent has with the same shape and,
    when `preceding` is given, behind the same decisions; in order, stopping at the first mismatch."""
    names = []
    child_seq, parent_seq = [list(d) for d in child_decisions], [list(d) for d in parent_decisions]
    for name, tensor in child.items():
        other = parent.get(name)
        if other is None or other.shape != tensor.shape or other.dtype != tensor.dtype:
            break
        if preceding is not None:
            n = preceding.get(name, len(child_seq))
            if child_seq[:n] != parent_seq[:n]:
                break
        names.append(name)
    return names


def save_weights(trial: optuna.Trial, model: nn.Module, store: FileSystemArtifactStore) -> str:
    """Upload the model's state dict as an artifact of `trial`; returns the artifact id."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"trial{trial.number}_weights.pt")
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
        artifact_id = upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial,
                                      mimetype="application/octet-stream")
    trial.set_user_attr(WEIGHTS_ATTR, artifact_id)
    return artifact_id


def load_weights(artifact_id: str, store: FileSystemArtifactStore) -> dict[str, torch.Tensor]:
    """A stored state dict, loaded with `weights_only=True` (tensors only, no code)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.pt")
        download_artifact(artifact_store=store, file_path=path, artifact_id=artifact_id)
        with open(path, "rb") as f:
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


def inherit(model: nn.Module, recorder: Recorder, study: optuna.Study, store: FileSystemArtifactStore, *,
            exclude: int | None = None, accuracy_index: int | None = 0) -> dict[str, Any] | None:
    """Copy the best matching prefix of a finished parent's weights into `model` (built with `recorder`).

    Returns `{"parent": number, "tensors": [...], "total": n}`, or None when no parent shares a layer.
    """
    import torch

    own = model.state_dict()
    preceding = recorder.preceding(model)
    best: tuple[int, float, int, dict[str, torch.Tensor], list[str]] | None = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        artifact = t.user_attrs.get(WEIGHTS_ATTR)
        if not artifact or t.number == exclude:
            continue
        weights = load_weights(artifact, store)
        names = matching_prefix(own, weights, preceding, recorder.sequence, t.user_attrs.get(DECISIONS_ATTR, []))
        score = t.values[accuracy_index] if accuracy_index is not None and t.values else 0.0
        if names and (best is None or (len(names), score) > (best[0], best[1])):
            best = (len(names), score, t.number, weights, names)
    if best is None:
        return None
    _, _, number, weights, names = best
    with torch.no_grad():
        for name in names:
            own[name].copy_(weights[name].to(own[name].device))
    return {"parent": number, "tensors": names, "total": len(own)}
