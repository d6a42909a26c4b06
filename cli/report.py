"""`nasopt report STUDY [-o report.html]`: one self-contained HTML file about a study (plotly inline)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from nasopt.errors import UserError

__all__ = ["add_parser", "cmd_report"]


def cmd_report(args: argparse.Namespace) -> int:
    from nasopt.analysis._dashboard import artifact_folder
    from nasopt.analysis._results import load_study

    study = load_study(args.study, args.storage)
    out = Path(args.output or f"{args.study}_report.html")
    if out.is_dir():
        raise UserError(f"-o {out} is a directory; give a file name such as {out / 'report.html'}")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: the folder {out.parent} does not exist; create it or choose another -o")
    # the pictures kept with the study carry shapes; without them, pictures are drawn from the params
    store = artifact_folder(args.storage, args.artifacts)
    from nasopt.analysis._report import write_report

    with warnings.catch_warnings():  # Optuna's plots are "experimental" for some arguments
        warnings.simplefilter("ignore")
        try:
            write_report(study, out, store)
        except OSError as e:
            raise UserError(f"cannot write {out}: {e.strerror}") from None
    print(f"report of {args.study} ({len(study.get_trials(deepcopy=False))} trials) written to {out}",
          file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    r = sub.add_parser("report", help="write one self-contained HTML report of a study (Pareto front, history, ...)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                           "examples:\n"
                           "  nasopt report nano_evolution                    # -> nano_evolution_report.html\n"
                           "  nasopt report mobile_pareto -o report.html --storage sqlite:///runs/mobile.db\n"))
    r.add_argument("study", help="the study's name (see `nasopt ls`)")
    r.add_argument("-o", "--output", metavar="FILE", help="the HTML file to write (default STUDY_report.html)")
    r.add_argument("--storage", help="storage URL (default sqlite:///nasopt.db in the working directory)")
    r.add_argument("--artifacts", metavar="DIR",
                   help="the study's artifact folder, for the stored pictures (default <db>.artifacts beside an "
                        "SQLite file)")
    r.set_defaults(func=cmd_report)
