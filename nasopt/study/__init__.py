"""The runner: what a study file declares (`StudySpec`), `run()`, the worker loop and the fork
supervisor, signals and the watchdog, the sampled and gradient objectives, recovery of interrupted
trials, the index of a study's trials, progress, and the study's identity check.
"""

from nasopt.study._run import finished_count, run
from nasopt.study._spec import METRICS, StudySpec

__all__ = ["StudySpec", "run", "METRICS", "finished_count"]
