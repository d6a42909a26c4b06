"""Multi-objective NAS on the mobile space: accuracy up, measured latency down, parameters down.

Run with:  nasopt run studies/mobile_pareto.py
Resume:    the same command again (the study continues until n_trials trials have finished).
"""

import optuna

import nasopt
from nasopt.search_spaces.mobile import MobileSpace

study = nasopt.StudySpec(
    name="mobile_pareto",
    space=MobileSpace(stages=3, max_depth=3),
    dataset="digits",  # scikit-learn's real 8x8 handwritten digits, offline
    objectives={"accuracy": "maximize", "latency_ms": "minimize", "params": "minimize"},
    constraints={"params": 50_000},  # checked before training: bigger networks are never trained
    sampler=optuna.samplers.NSGAIISampler(population_size=10, seed=0),
    n_trials=30,
    train=nasopt.TrainConfig(epochs=10, batch_size=64, lr=0.05),
)
