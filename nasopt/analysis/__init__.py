"""Reading results: trials as a DataFrame and the Pareto set, plots (`plots`: the objectives, `arch_plots`: the
architectures and their training), the HTML report and the dashboard's views.
"""

from nasopt.analysis import _plot_archs as arch_plots
from nasopt.analysis import _plots as plots
from nasopt.analysis._dashboard import FeasibilityView, artifact_folder
from nasopt.analysis._report import render_report, search_metrics, write_report
from nasopt.analysis._results import load_study, pareto_front, study_names, trials_frame

__all__ = ['FeasibilityView', 'artifact_folder', 'plots', 'arch_plots', 'write_report', 'search_metrics', 'render_report', 'load_study', 'trials_frame', 'pareto_front', 'study_names']
