"""A tiny multi-objective study for the end-to-end tests: 2 stages on digits, 2 epochs, 4 trials.

The sampler is NSGA-II seeded with 1, so `--set sampler=random` (seed 0) proposes other architectures.
"""

import optuna

import nasopt
from nasopt.search_spaces.mobile import MobileSpace

study = nasopt.StudySpec(
    name="tiny_mobile",
    space=MobileSpace(stages=2, max_depth=2, kernels=(3, 5), expands=(1, 3), widths=(0.5, 1.0)),
    dataset="digits",
    objectives={"accuracy": "maximize", "latency_ms": "minimize", "params": "minimize"},
    sampler=optuna.samplers.NSGAIISampler(population_size=4, seed=1),
    n_trials=4,
    train=nasopt.TrainConfig(epochs=2, batch_size=128, lr=0.05),
    measure=nasopt.MeasureConfig(warmup=1, repeats=5),
)
