"""A tiny study for the interruption tests (tests/test_interruptions.py).

Its networks wait in `build` while the file named by $NASOPT_TEST_BLOCK exists: a test signals the run at a
known moment of a trial (its params written, its network not yet trained), as often as it likes, then
removes the file and the trial completes. While it waits, the file's name plus `.<pid>` exists. The start-up check builds without a chooser and never waits.
"""

import os
import time

import optuna

import nasopt
from nasopt.search_spaces.nano import NanoSpace


class WaitingNano(NanoSpace):
    def build(self, arch, task, choose=None):
        if choose is None:
            return super().build(arch, task)
        marker = os.environ.get("NASOPT_TEST_BLOCK")
        if marker and os.path.exists(marker):
            open(f"{marker}.{os.getpid()}", "w").close()  # "waiting": the params are all written
        while marker and os.path.exists(marker):
            time.sleep(0.05)
        return super().build(arch, task, choose)


study = nasopt.StudySpec(
    name="tiny_interrupt",
    space=WaitingNano(C=4),
    dataset="synthetic",
    objectives={"accuracy": "maximize"},
    sampler=optuna.samplers.RandomSampler(seed=0),
    n_trials=2,
    train=nasopt.TrainConfig(epochs=1, batch_size=128),
    measure=nasopt.MeasureConfig(warmup=0, repeats=3),
)
