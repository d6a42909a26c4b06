"""NSGA-II on the 1-D DARTS cell space and MNIST-1D: sampled trials in the same study as the DARTS runs.

Run with:  nasopt run studies/mnist1d_evolution.py    (about 10 minutes on 2 CPU cores)
           nasopt run studies/mnist1d_darts.py        (DARTS and PC-DARTS: one trial each, same study)
           nasopt show mnist1d                        (both kinds on one Pareto front)

Same name, space, data, objectives and training as studies/mnist1d_darts.py, so every trial of the study
is measured alike and the Pareto front compares the gradient methods with evolution row by row.
"""

import optuna

import nasopt
from nasopt.search_spaces.conv1d import Conv1dSpace

study = nasopt.StudySpec(
    name="mnist1d",
    space=Conv1dSpace(C=8, layers=3),
    dataset="mnist1d",
    objectives={"accuracy": "maximize", "params": "minimize"},
    sampler=optuna.samplers.NSGAIISampler(population_size=8, seed=0),
    n_trials=16,
    train=nasopt.TrainConfig(epochs=10, batch_size=64, lr=0.05),
)
