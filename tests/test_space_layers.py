"""The layers space (the NAS-from-scratch layer genome): conditional names, depth limit, shapes, the
chooser contract, and REA mutations that change one gene and still build. The generic space contract
runs over it in test_spaces.py."""

from __future__ import annotations

import re
from types import SimpleNamespace

import optuna
import pytest
import torch
from torch import nn

from nasopt import UserError
from nasopt.samplers import REASampler
from nasopt.samplers._rea import CHILD_KEY
from nasopt.search_spaces.layers import LAYER_TYPES, LayersSpace
from nasopt.space import fixed

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = {"n_layers": 5,
        "layer0.type": "conv", "layer0.filters": 32, "layer0.kernel": 3, "layer0.skip": False,
        "layer1.type": "maxpool",
        "layer2.type": "conv", "layer2.filters": 64, "layer2.kernel": 5, "layer2.skip": True,
        "layer3.type": "batchnorm",
        "layer4.type": "dropout", "layer4.rate": 0.25,
        "dense.units": 128}


def task(shape, num_classes=10):
    return SimpleNamespace(input_shape=shape, num_classes=num_classes)


def expected_names(arch) -> set[str]:
    names = {"n_layers", "dense.units"}
    for i in range(arch["n_layers"]):
        kind = arch[f"layer{i}.type"]
        names.add(f"layer{i}.type")
        if kind == "conv":
            names |= {f"layer{i}.filters", f"layer{i}.kernel", f"layer{i}.skip"}
        elif kind == "dropout":
            names.add(f"layer{i}.rate")
    return names


def test_describe_is_the_compact_genome():
    assert LayersSpace().describe(ARCH) == "layers:c32k3-mp-c64k5+s-bn-do0.25|d128"
    assert LayersSpace().suggest(optuna.trial.FixedTrial(ARCH)) == ARCH


def test_names_are_unique_per_condition_and_keep_one_distribution():
    space = LayersSpace(max_layers=4)
    dists = space.distributions()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = set()
    for _ in range(60):
        trial = study.ask()
        arch = space.suggest(trial)
        assert set(arch) == expected_names(arch)
        for name, dist in study._storage.get_trial(trial._trial_id).distributions.items():
            assert dists[name] == dist, name
        kinds |= {arch[f"layer{i}.type"] for i in range(arch["n_layers"])}
    assert kinds == set(LAYER_TYPES)
    pattern = re.compile(r"^(n_layers|dense\.units|layer\d\.(type|filters|kernel|skip|rate))$")
    assert all(pattern.match(n) for n in dists)
    assert len(dists) == 2 + 4 * 5


def test_max_layers_is_respected():
    space = LayersSpace(max_layers=3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    depths = set()
    for _ in range(40):
        arch = space.suggest(study.ask())
        depths.add(arch["n_layers"])
        assert not any(n.startswith("layer3.") for n in arch)
    assert depths == {1, 2, 3}
    assert max(int(m) for n in space.distributions() if (m := n[5:6]).isdigit()) == 2


@pytest.mark.parametrize("size", [8, 11, 16, 28, 32])
def test_any_genome_fits_inputs_from_8_to_32(size):
    """Eight pools never shrink the map below min_resolution; the logits always come out."""
    space = LayersSpace()
    arch = {"n_layers": 8, "dense.units": 0}
    for i in range(8):
        arch[f"layer{i}.type"] = "maxpool" if i % 2 else "avgpool"
    sizes = []

    def recording(name, candidates, chosen, C_in, C_out, stride, **options):
        module = fixed(name, candidates, chosen, C_in, C_out, stride, **options)
        module.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
        return module

    model = space.build(arch, task((3, size, size), 5), choose=recording).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert min(sizes) == 2 and sizes == sorted(sizes, reverse=True)
    # the mixed genome too, on a non-square input
    model = space.build(ARCH, task((1, size, size + 3), 4)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size + 3)).shape == (2, 4)


def test_build_asks_the_chooser_at_every_layer_and_skip():
    calls = []

    def recording(name, candidates, chosen, C_in, C_out, stride, **options):
        calls.append((name, chosen, C_in, C_out, stride, options))
        assert chosen in candidates
        return fixed(name, candidates, chosen, C_in, C_out, stride, **options)

    model = LayersSpace().build(ARCH, task((3, 32, 32)), choose=recording)
    assert calls == [
        ("layer0", "conv3x3", 3, 32, 1, {}), ("layer0.skip", "zero", 3, 32, 1, {}),
        ("layer1", "maxpool3x3", 32, 32, 2, {}),
        ("layer2", "conv5x5", 32, 64, 1, {}), ("layer2.skip", "skip", 32, 64, 1, {}),
        ("layer3", "batchnorm", 64, 64, 1, {}),
        ("layer4", "dropout", 64, 64, 1, {"rate": 0.25}),
    ]
    default = LayersSpace().build(ARCH, task((3, 32, 32)))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in default.parameters())
    layers = list(default.layers)
    assert layers[0].branch is None  # no skip: nothing extra to run
    assert isinstance(layers[2].branch, nn.Sequential) and layers[2].branch[0].kernel_size == (1, 1)  # 32 -> 64
    dropout = [m for m in layers[4].op.modules() if isinstance(m, nn.Dropout)]
    assert len(dropout) == 1 and dropout[0].p == 0.25


def test_skip_without_channel_change_is_an_identity_add():
    arch = {"n_layers": 2, "layer0.type": "conv", "layer0.filters": 16, "layer0.kernel": 3, "layer0.skip": False,
            "layer1.type": "conv", "layer1.filters": 16, "layer1.kernel": 3, "layer1.skip": True, "dense.units": 0}
    model = LayersSpace().build(arch, task((1, 8, 8)))
    assert isinstance(model.layers[1].branch, nn.Identity)


def test_rea_mutation_changes_exactly_one_gene_and_builds():
    space = LayersSpace(max_layers=5)
    study = optuna.create_study(sampler=REASampler(population_size=6, sample_size=3, crossover_prob=0.0, seed=0),
                                direction="maximize")
    study.optimize(lambda t: float(len(space.describe(space.suggest(t)))), n_trials=40)
    mutated_kinds = set()
    for t in study.trials[6:]:
        record = t.system_attrs[CHILD_KEY]
        (number,) = record["parents"]
        parent = study.trials[number]
        changed = [n for n in set(parent.params) & set(t.params) if parent.params[n] != t.params[n]]
        assert changed == [record["mutated"]]
        assert space.describe(t.params) != space.describe(parent.params)
        mutated_kinds.add(record["mutated"].split(".")[-1])
        model = space.build(t.params, task((1, 8, 8), 3)).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 1, 8, 8)).shape == (1, 3)
    # structural (depth, layer type) and hyperparameter mutations both happened
    assert "n_layers" in mutated_kinds and "type" in mutated_kinds
    assert mutated_kinds & {"filters", "kernel", "skip", "rate", "units"}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_layers": 0}, "max_layers >= 1"), ({"min_resolution": 0}, "min_resolution >= 1"),
    ({"kernels": (4,)}, "kernels"), ({"filters": (0,)}, "filters"), ({"rates": (1.0,)}, "rates"),
    ({"dense_units": (-1,)}, "dense_units"),
])
def test_bad_arguments_name_the_rule(kwargs, match):
    with pytest.raises((ValueError, UserError), match=match):
        LayersSpace(**kwargs)
