"""Multi-objective NAS on the mobile space: accuracy up, measured latency down, parameters down.

The data is MNIST-1D (Greydanus 2020): 10 classes of 1-D signals of length 40, generated offline by the
`mnist1d` package and cached (4,000 training signals, 800 of them held out for validation, and a 1,000-signal
test set), so the mobile space builds its MBConv blocks in 1-D (Conv1d, a length-k depthwise conv).
MNIST-1D is a known benchmark made to tell architectures apart, and here it does: in 10 epochs the 30 trials
spread from about 91 % to 98 % validation accuracy, and retraining the same architectures with other seeds
keeps their order of merit (also at 20 epochs). scikit-learn's 8x8 digits, the earlier default, reach 100 %
of their 288 validation images within a few trials, so accuracy stopped separating the front; with half of
them held out the spread is about as wide after 10 epochs but vanishes when trained longer (every network
then lands at about 97 %), so it measured how fast a network learns, not how good it is.

Run with:  nasopt run studies/mobile_pareto.py
Resume:    the same command again (the study continues until n_trials trials have finished).
"""

import optuna

import nasopt
from nasopt.search_spaces.mobile import MobileSpace

study = nasopt.StudySpec(
    name="mobile_pareto",
    space=MobileSpace(stages=3, max_depth=3),
    dataset="mnist1d",  # MNIST-1D: 1-D signals (1, 40), 10 classes, generated offline once and cached
    objectives={"accuracy": "maximize", "latency_ms": "minimize", "params": "minimize"},
    constraints={"params": 50_000},  # checked before training: bigger networks are never trained
    sampler=optuna.samplers.NSGAIISampler(population_size=10, seed=0),
    n_trials=30,
    train=nasopt.TrainConfig(epochs=10, batch_size=64, lr=0.05),
)
