"""The trial and study attribute keys nasopt writes, defined once (a leaf: imports nothing of nasopt).

System attrs are nasopt's bookkeeping; user attrs are what a user reads (dashboard, `trials_frame`).
"""

from __future__ import annotations

__all__ = ["WORKER_KEY", "INTERRUPTED_KEY", "FAILURE_KEY", "FAILURES_KEY", "STRATEGY_KEY", "CHECKPOINT_KEY",
           "WEIGHTS_ATTR", "DECISIONS_ATTR", "PICTURE_ATTR", "DROPPED_ATTR",
           "OPTUNA_ARTIFACT_PREFIX"]

# -- system attrs of a trial
WORKER_KEY = "nasopt:worker"  # host, pid, start time (and worker index and seed) of the runner; also a study's claim
INTERRUPTED_KEY = "nasopt:interrupted"  # stopped from outside (a signal): its retry does not count
FAILURE_KEY = "nasopt:failure"  # {"by": "architecture" | "interruption", "retry": bool}; none: an interruption
FAILURES_KEY = "nasopt:architecture_failures"  # architecture failures in the trial's retry chain, its own included
STRATEGY_KEY = "nasopt:strategy"  # the label of the gradient method that owns the trial
# Optuna's record of an uploaded artifact is the system attr "artifacts:<artifact id>" (its storage format,
# read by optuna-dashboard; tests/test_layers.py checks it against the installed Optuna)
OPTUNA_ARTIFACT_PREFIX = "artifacts:"

# -- user attrs of a trial
CHECKPOINT_KEY = "nasopt:checkpoint"  # artifact id of a gradient search's last epoch checkpoint
WEIGHTS_ATTR = "weights_artifact"  # artifact id of the trained weights kept for inheritance and export
DECISIONS_ATTR = "decisions"  # the build's sequence of decisions (weight inheritance maps tensors by it)
PICTURE_ATTR = "picture_artifact"  # artifact id of the architecture picture

# -- user attrs of a study
DROPPED_ATTR = "weights_dropped"  # trials whose weights left with the Pareto front
