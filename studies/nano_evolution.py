"""Single-objective NAS on the 625-architecture nano space with an evolutionary sampler.

Run with:  nasopt run studies/nano_evolution.py
"""

import optuna

import nasopt
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(
    name="nano_evolution",
    space=NanoSpace(C=16),
    dataset="digits",
    objectives={"accuracy": "maximize"},
    sampler=optuna.samplers.NSGAIISampler(population_size=8, seed=0),
    pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    n_trials=20,
    train=nasopt.TrainConfig(epochs=10, batch_size=64, lr=0.05),
)
