"""DARTS in the paper's CIFAR-10 setting, for a machine with a GPU and the CIFAR-10 data.

Run with:  nasopt run studies/darts_cifar10.py --device cuda --set data_dir=/path/to/data

The search network is 8 cells of C=16 (search_C/search_layers), trained 50 epochs at batch 64 on half of
the training split with the architecture weights on the other half (first order; --set strategy.unrolled=true
for the second-order variant). The derived cells are then trained in the evaluation network of 20 cells,
C=36, auxiliary head (weight 0.4) and drop path 0.2, for 600 epochs at batch 96 (DARTS' train.py settings,
without cutout). On one GPU expect about a day for the search and two for the evaluation.
`data_dir` holds `cifar-10-batches-py/` (the python version from https://www.cs.toronto.edu/~kriz/).
"""

import nasopt
from nasopt.oneshot import DARTS
from nasopt.search_spaces.darts_cell import DartsCellSpace

study = nasopt.StudySpec(
    name="darts_cifar10",
    space=DartsCellSpace(C=36, layers=20, auxiliary=True, drop_path=0.2, search_C=16, search_layers=8),
    dataset="cifar10",
    val_fraction=0.1,
    objectives={"accuracy": "maximize", "params": "minimize"},
    strategy=DARTS(epochs=50, batch_size=64),
    train=nasopt.TrainConfig(epochs=600, batch_size=96, lr=0.025, weight_decay=3e-4, grad_clip=5.0, aux_weight=0.4),
    device="auto",
)
