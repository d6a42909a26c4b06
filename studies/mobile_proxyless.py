"""ProxylessNAS on the mobile space, as one more trial of the `mobile_pareto` study (NSGA-II's study).

First measure the latency table of this machine (every candidate op at every shape of the space):
    nasopt latency-table --study studies/mobile_proxyless.py        # -> ./latency_mobile_cpu.json
Then:
    nasopt run studies/mobile_proxyless.py
    nasopt show mobile_pareto                                      # next to the sampled trials
If the target is below the fastest architecture's predicted latency, the run stops at once and says the minimum.
"""

import nasopt
from nasopt.oneshot import ProxylessNAS
from nasopt.search_spaces.mobile import MobileSpace

study = nasopt.StudySpec(
    name="mobile_pareto",
    space=MobileSpace(stages=3, max_depth=3),
    dataset="mnist1d",  # the study's data (studies/mobile_pareto.py): the supernet is 1-D too
    objectives={"accuracy": "maximize", "latency_ms": "minimize", "params": "minimize"},
    constraints={"params": 50_000},
    # searched at the largest width; CE x max(1, E[latency] / 1.5 ms) ** 0.6 from the table
    strategy=ProxylessNAS(epochs=30, batch_size=32, lr=0.05, arch_lr=3e-3, latency_target_ms=1.5),
    train=nasopt.TrainConfig(epochs=10, batch_size=64, lr=0.05),
)
