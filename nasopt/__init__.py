"""nasopt: Neural Architecture Search on Optuna.

An architecture is the `params` of an Optuna trial; every strategy writes its results as trials of
one Optuna study, so optuna-dashboard, pandas and SQL see them all.
"""

from nasopt.errors import UserError
from nasopt.export import load_model
from nasopt.metrics import MeasureConfig
from nasopt.results import pareto_front, trials_frame
from nasopt.study import StudySpec, run
from nasopt.train import TrainConfig

__version__ = "0.1.0"

__all__ = ["StudySpec", "TrainConfig", "MeasureConfig", "UserError", "run", "trials_frame", "pareto_front", "load_model",
           "nano_nas", "search", "benchmark", "__version__"]

_ONE_LINE = ("nano_nas", "search", "benchmark")


def __getattr__(name: str) -> object:
    # The one-line API resolves space and strategy names, like the CLI it lives beside; imported on
    # first use so that the engine itself never depends on the front ends.
    if name in _ONE_LINE:
        from nasopt.cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'nasopt' has no attribute {name!r}")
