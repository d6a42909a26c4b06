"""An ENAS run small enough for the tests: nano space (C=4) on digits, one gradient trial."""

import nasopt
from nasopt.oneshot import ENAS
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(
    name="tiny_enas",
    space=NanoSpace(C=4),
    dataset="digits",
    objectives={"accuracy": "maximize", "params": "minimize"},
    strategy=ENAS(epochs=8, batch_size=16, controller_steps=2, controller_batch=4, derive_samples=4),
    train=nasopt.TrainConfig(epochs=1, batch_size=64),
)
