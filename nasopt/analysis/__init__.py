"""Reading results: trials as a DataFrame and the Pareto set, plots (`plots`: the objectives, `arch_plots`: the
architectures and their training), the HTML report and the dashboard's views.

The names are imported on first use (PEP 562): `nasopt show` reads a study with pandas alone, without the
plots (plotly) or the dashboard's views (torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasopt._lazy import lazy_exports

__all__ = ['FeasibilityView', 'artifact_folder', 'plots', 'arch_plots', 'write_report', 'search_metrics', 'render_report', 'load_study', 'trials_frame', 'pareto_front', 'study_names', 'trial_warnings', 'front_warnings']

# public name -> (the module that defines it, the attribute there; None: the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "arch_plots": ("nasopt.analysis._plot_archs", None), "plots": ("nasopt.analysis._plots", None),
    "FeasibilityView": ("nasopt.analysis._dashboard", "FeasibilityView"),
    "artifact_folder": ("nasopt.analysis._dashboard", "artifact_folder"),
    "render_report": ("nasopt.analysis._report", "render_report"),
    "search_metrics": ("nasopt.analysis._report", "search_metrics"),
    "write_report": ("nasopt.analysis._report", "write_report"),
    "load_study": ("nasopt.analysis._results", "load_study"),
    "pareto_front": ("nasopt.analysis._results", "pareto_front"),
    "study_names": ("nasopt.analysis._results", "study_names"),
    "trials_frame": ("nasopt.analysis._results", "trials_frame"),
    "trial_warnings": ("nasopt.analysis._trust", "trial_warnings"),
    "front_warnings": ("nasopt.analysis._trust", "front_warnings"),
}

if TYPE_CHECKING:
    from nasopt.analysis import _plot_archs as arch_plots
    from nasopt.analysis import _plots as plots
    from nasopt.analysis._dashboard import FeasibilityView, artifact_folder
    from nasopt.analysis._report import render_report, search_metrics, write_report
    from nasopt.analysis._results import load_study, pareto_front, study_names, trials_frame
    from nasopt.analysis._trust import front_warnings, trial_warnings


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
