"""A tiny two-objective study whose trials keep their trained weights (for export/train/profile tests)."""

import optuna

import nasopt
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(
    name="tiny_export",
    space=NanoSpace(C=8, positions=2),
    dataset="digits",
    objectives={"accuracy": "maximize", "params": "minimize"},
    sampler=optuna.samplers.RandomSampler(seed=0),
    n_trials=3,
    inherit_weights=True,
    train=nasopt.TrainConfig(epochs=1, batch_size=128, lr=0.05),
    measure=nasopt.MeasureConfig(warmup=1, repeats=5),
)
