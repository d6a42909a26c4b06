"""A tiny study for the retry cap (tests/test_interruptions.py): one architecture always fails.

The first architecture a trial builds is written to the file named by $NASOPT_TEST_BAD; building it again
raises every time (a bug that only this architecture hits). The start-up check builds without a chooser.
"""

import json
import os

import optuna

import nasopt
from nasopt.search_spaces.nano import NanoSpace


class OneBadNano(NanoSpace):
    def build(self, arch, task, choose=None):
        if choose is None:
            return super().build(arch, task)
        path = os.environ["NASOPT_TEST_BAD"]
        if not os.path.exists(path):
            with open(path, "w") as f:
                json.dump(dict(arch), f)
        with open(path) as f:
            if json.load(f) == dict(arch):
                raise RuntimeError("this architecture always fails")
        return super().build(arch, task, choose)


study = nasopt.StudySpec(
    name="tiny_raises",
    space=OneBadNano(C=4),
    dataset="synthetic",
    objectives={"accuracy": "maximize"},
    sampler=optuna.samplers.RandomSampler(seed=0),
    n_trials=3,
    train=nasopt.TrainConfig(epochs=1, batch_size=128),
    measure=nasopt.MeasureConfig(warmup=0, repeats=3),
)
