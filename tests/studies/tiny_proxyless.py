"""A ProxylessNAS run small enough for the tests: a 2-stage mobile space on digits, one gradient trial.

The latency table is `latency_mobile_cpu.json` in the working directory:
`nasopt latency-table --study tests/studies/tiny_proxyless.py --repeats 2` writes it there.
"""

import nasopt
from nasopt.oneshot import ProxylessNAS
from nasopt.search_spaces.mobile import MobileSpace

study = nasopt.StudySpec(
    name="tiny_proxyless",
    space=MobileSpace(stages=2, max_depth=2, kernels=(3, 5), expands=(1, 3), widths=(0.5, 1.0)),
    dataset="digits",
    objectives={"accuracy": "maximize", "latency_ms": "minimize"},
    strategy=ProxylessNAS(epochs=8, batch_size=16, lr=0.05, arch_lr=0.01, latency_target_ms=1000.0),
    train=nasopt.TrainConfig(epochs=1, batch_size=64),
    measure=nasopt.MeasureConfig(warmup=1, repeats=5),
)
