"""DARTS and PC-DARTS on MNIST-1D, each as ONE trial of the study `mnist1d`.

Run with:  nasopt run studies/mnist1d_darts.py        (about 15 minutes on 2 CPU cores)
Then:      nasopt run studies/mnist1d_evolution.py    (NSGA-II, same study: sampled trials beside them)
           nasopt show mnist1d                        (gradient and sampled trials ranked together)

Each search trains a supernet of the 1-D DARTS cell space (the TinyML seed's setting) for 10 epochs on
half of the training split while the architecture weights learn on the other half; the derived cells
become the trial's params (the same decisions NSGA-II samples), and that network is trained like every
sampled trial (`train`) for the objectives. A kill mid-search resumes from the last epoch's checkpoint.
"""

import nasopt
from nasopt.oneshot import DARTS
from nasopt.search_spaces.conv1d import Conv1dSpace

study = nasopt.StudySpec(
    name="mnist1d",
    space=Conv1dSpace(C=8, layers=3),
    dataset="mnist1d",  # generated offline by the mnist1d package: 4000 train / 1000 test signals of length 40
    objectives={"accuracy": "maximize", "params": "minimize"},
    strategy=[
        # a short search on small data needs a larger architecture step than the paper's 3e-4 over 50 epochs
        DARTS(epochs=10, batch_size=64, arch_lr=3e-3),
        DARTS(epochs=10, batch_size=64, arch_lr=6e-3, partial_channels=4),  # PC-DARTS: K=4, edge normalisation
    ],
    train=nasopt.TrainConfig(epochs=10, batch_size=64, lr=0.05),
)
