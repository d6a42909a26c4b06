"""A tiny study for orphaned trials (tests/test_interruptions.py): its process dies inside Optuna's `ask`.

While the file named by $NASOPT_TEST_KILL exists, the sampler's `before_trial` -- called by `ask` after
Optuna created the trial, before the objective runs -- removes the file and SIGKILLs its own process: a
trial left RUNNING with no params, at the moment a real kill hits once per 20 kills. nano-bench: no training.
"""

import os
import signal

import optuna

import nasopt
from nasopt.search_spaces.nano import NanoSpace


class DiesInAsk(optuna.samplers.RandomSampler):
    def before_trial(self, study, trial):
        marker = os.environ.get("NASOPT_TEST_KILL")
        if marker and study.study_name == "tiny_orphan":
            try:
                os.unlink(marker)
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        super().before_trial(study, trial)


study = nasopt.StudySpec(
    name="tiny_orphan",
    space=NanoSpace(),
    dataset="nanobench",
    objectives={"accuracy": "maximize", "params": "minimize"},
    sampler=DiesInAsk(seed=0),
    n_trials=2,
)
