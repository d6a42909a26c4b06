"""nasopt: Neural Architecture Search on Optuna.

An architecture is the `params` of an Optuna trial; every strategy writes its results as trials of
one Optuna study, so optuna-dashboard, pandas and SQL see them all.

The public names are imported on first use (PEP 562): `import nasopt` costs milliseconds, so the
`nasopt` command answers `--help` and handles Ctrl-C before torch is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasopt._lazy import lazy_exports
from nasopt.errors import UserError

__version__ = "0.1.0"

__all__ = ["StudySpec", "TrainConfig", "MeasureConfig", "UserError", "run", "trials_frame", "pareto_front", "load_model",
           "nano_nas", "search", "benchmark", "__version__"]

# public name -> the module that defines it. The one-line API resolves space and strategy names like
# the CLI it lives beside; the engine itself never imports the front ends.
_LAZY = {"StudySpec": "nasopt.study._spec", "run": "nasopt.study._run", "TrainConfig": "nasopt.train",
         "MeasureConfig": "nasopt.measure._metrics", "trials_frame": "nasopt.analysis._results", "pareto_front": "nasopt.analysis._results",
         "load_model": "nasopt.export._export", "nano_nas": "nasopt.api", "search": "nasopt.api",
         "benchmark": "nasopt.api"}

if TYPE_CHECKING:
    from nasopt.analysis._results import pareto_front, trials_frame
    from nasopt.api import benchmark, nano_nas, search
    from nasopt.export._export import load_model
    from nasopt.measure._metrics import MeasureConfig
    from nasopt.study._run import run
    from nasopt.study._spec import StudySpec
    from nasopt.train import TrainConfig


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY, submodules=True)  # nasopt.oneshot after `import nasopt`
