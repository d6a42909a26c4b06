"""The trial note that shows a trial's architecture picture large in optuna-dashboard.

The dashboard lists a trial's artifacts as ~130 px thumbnails, so the picture also goes into the trial's
note (`picture_note`: Markdown that optuna-dashboard renders at the top of the trial page, as wide as the
page allows, linked to the file at full size), written with optuna-dashboard's own `save_note`. A note the
user wrote is never replaced, and a note that cannot be written never fails a trial.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna

__all__ = ["TrialRef", "note_picture", "picture_note"]

_log = logging.getLogger("nasopt")


def picture_note(study_id: int, trial_id: int, artifact_id: str, title: str) -> str:
    """The Markdown of a trial note that shows the architecture picture large: optuna-dashboard serves the
    artifact at `/artifacts/<study_id>/<trial_id>/<artifact_id>` (the URL its own "Insert an image" writes)
    and renders a note's image at its own size, at most the page's width; a click opens it at full size."""
    url = f"/artifacts/{study_id}/{trial_id}/{artifact_id}"
    title = title.replace("`", "'")  # in a code span: genotypes hold `_` and `*`, which Markdown would eat
    return f"Architecture of `{title}` ([full size]({url})):\n\n[![architecture]({url})]({url})\n"


class TrialRef:
    """A trial as optuna-dashboard's `save_note`/`get_note` read it (its storage, study and id); a finished
    trial cannot be reopened as an `optuna.Trial`, whose constructor calls the sampler."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self.study, self.storage, self._trial_id = study, study._storage, trial_id


@functools.cache
def _dashboard_notes() -> tuple[Any, Any]:
    """optuna-dashboard's own `get_note` and `save_note` (its note format, via its API). They live in its
    `_note` module, which needs only optuna; the package's `__init__` also loads its web app and, through
    its preferential GP sampler, botorch and gpytorch (~1.8 s per process, and torch.jit FutureWarnings on
    the user's terminal). So the module is loaded from its file alone; any surprise falls back to the
    package import with that noise silenced."""
    try:
        spec = importlib.util.find_spec("optuna_dashboard")  # locates the package without importing it
        assert spec is not None and spec.submodule_search_locations
        path = Path(next(iter(spec.submodule_search_locations))) / "_note.py"
        module_spec = importlib.util.spec_from_file_location("_nasopt_dashboard_note", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_note, module.save_note
    except Exception:  # noqa: BLE001 - another layout of optuna-dashboard: its public import
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            from optuna_dashboard import get_note, save_note
        return get_note, save_note


def note_picture(trial: Any, artifact_id: str, title: str) -> bool:
    """Write the picture's note (`picture_note`) on `trial` (an `optuna.Trial`, or what optuna-dashboard's
    `save_note` reads of one) unless it has a note (a user's note stays); True when written. Never raises:
    a note that cannot be written is logged and skipped."""
    try:
        get_note, save_note = _dashboard_notes()
        if get_note(trial).strip():
            return False
        save_note(trial, picture_note(trial.study._study_id, trial._trial_id, artifact_id, title))
        return True
    except Exception as e:  # a note is never worth a failed trial
        _log.warning("trial %s: no note with its picture (%s: %s)", getattr(trial, "number", trial._trial_id),
                     type(e).__name__, e)
        return False
