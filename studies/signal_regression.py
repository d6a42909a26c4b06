"""Regression on your own data: the frequency and amplitude of a noisy sinusoid, from 64 samples of it.

Run with:  OMP_NUM_THREADS=1 nasopt run studies/signal_regression.py     (about 2 minutes on 2 CPU cores, see README)

The data and the metric live in studies/signals.py, a plain module beside this file, as yours would:
`data="signals:make_datasets"` returns (train, val, test) TensorDatasets of x (N, 1, 64) and float targets
y (N, 2), so nasopt infers a regression (two outputs, mean squared error) and the 1-D space fits the signals.
Two objectives: the validation R² (`signals.r2`, your own metric) up and the parameter count down; the mean
absolute error (`signals.mae`) is recorded for every epoch beside them. The median-stopping pruner follows
the R² curve, the first objective.
"""

import optuna

import nasopt
from nasopt.pruners import MedianStop
from nasopt.search_spaces.conv1d import Conv1dSpace

study = nasopt.StudySpec(
    name="signal_regression",
    space=Conv1dSpace(C=8, layers=3),
    data="signals:make_datasets",
    metrics={"r2": "signals:r2", "mae": "signals:mae"},
    objectives={"r2": "maximize", "params": "minimize"},
    sampler=optuna.samplers.NSGAIISampler(population_size=8, seed=0),
    pruner=MedianStop(n_startup_trials=5, n_warmup_epochs=3),
    n_trials=16,
    train=nasopt.TrainConfig(epochs=6, batch_size=64, lr=0.05),
)
