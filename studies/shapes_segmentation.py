"""Segmentation on your own data: the class of every pixel of 16x16 images of rectangles, discs and triangles.

Run with:  OMP_NUM_THREADS=1 nasopt run studies/shapes_segmentation.py     (about 1.5 minutes on 2 CPU cores, see README)

The data and the metric live in studies/shapes.py, a plain module beside this file, as yours would:
`data="shapes:make_datasets"` returns (train, val, test) TensorDatasets of images x (N, 1, 16, 16) and
integer targets y (N, 16, 16), one class per pixel, so nasopt infers a dense task (per-pixel cross-entropy,
outputs (N, 4, 16, 16)) and the nano space builds its dense head (a 1x1 conv at full resolution). Two
objectives: the validation mean intersection over union (`shapes.miou`, your own metric) up and the
parameter count down. The median-stopping pruner follows the mIoU curve, the first objective.
"""

import optuna

import nasopt
from nasopt.pruners import MedianStop
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(
    name="shapes_segmentation",
    space=NanoSpace(C=16),
    data="shapes:make_datasets",
    metrics={"miou": "shapes:miou"},
    objectives={"miou": "maximize", "params": "minimize"},
    sampler=optuna.samplers.NSGAIISampler(population_size=8, seed=0),
    pruner=MedianStop(n_startup_trials=5, n_warmup_epochs=4),
    n_trials=16,
    train=nasopt.TrainConfig(epochs=10, batch_size=64, lr=0.01, optimizer="adam"),
)
