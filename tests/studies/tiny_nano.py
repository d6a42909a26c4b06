"""A tiny single-objective study with a MedianPruner for the end-to-end tests."""

import optuna

import nasopt
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(
    name="tiny_nano",
    space=NanoSpace(C=8),
    dataset="digits",
    objectives={"accuracy": "maximize"},
    sampler=optuna.samplers.RandomSampler(seed=0),
    pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    n_trials=5,
    train=nasopt.TrainConfig(epochs=3, batch_size=128, lr=0.05),
    measure=nasopt.MeasureConfig(warmup=1, repeats=5),
)
