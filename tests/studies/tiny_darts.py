"""A DARTS run small enough for the tests: nano space (C=8) on digits, one gradient trial."""

import nasopt
from nasopt.oneshot import DARTS
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(
    name="tiny_darts",
    space=NanoSpace(C=8),
    dataset="digits",
    objectives={"accuracy": "maximize", "params": "minimize"},
    strategy=DARTS(epochs=6, batch_size=16),
    train=nasopt.TrainConfig(epochs=1, batch_size=64),
)
