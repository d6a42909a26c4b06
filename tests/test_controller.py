"""The LSTM controller: value grids, exact log-probabilities (conditional spaces included), sampling in the
space's own form, and REINFORCE moving probability towards a rewarded architecture."""

from __future__ import annotations

import itertools
import math

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nasopt import UserError
from nasopt.oneshot.controller import Controller, value_grid
from nasopt.search_spaces.layers import LayersSpace
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.search_spaces.nano import NanoSpace

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = NanoSpace(positions=2, ops=("conv3x3", "skip", "zero"))  # 9 architectures


class Conditional:
    """A variable-depth toy: a depth 1..2, an op per kept layer, and a rate only after a `drop` op."""

    def suggest(self, trial):
        arch = {"depth": trial.suggest_int("depth", 1, 2)}
        for i in range(arch["depth"]):
            op = arch[f"l{i}.op"] = trial.suggest_categorical(f"l{i}.op", ("conv", "drop"))
            if op == "drop":
                arch[f"l{i}.rate"] = trial.suggest_float(f"l{i}.rate", 0.0, 0.5, step=0.25)
        return arch

    def distributions(self):
        out = {"depth": IntDistribution(1, 2)}
        for i in range(2):
            out[f"l{i}.op"] = CategoricalDistribution(("conv", "drop"))
            out[f"l{i}.rate"] = FloatDistribution(0.0, 0.5, step=0.25)
        return out

    def all_archs(self):
        for depth in (1, 2):
            for ops in itertools.product(("conv", "drop"), repeat=depth):
                rates = [(0.0, 0.25, 0.5) if op == "drop" else (None,) for op in ops]
                for chosen in itertools.product(*rates):
                    arch = {"depth": depth}
                    for i, (op, rate) in enumerate(zip(ops, chosen, strict=True)):
                        arch[f"l{i}.op"] = op
                        if rate is not None:
                            arch[f"l{i}.rate"] = rate
                    yield arch


@pytest.mark.parametrize("dist", [
    IntDistribution(1, 4), IntDistribution(-10, 10), IntDistribution(0, 10, step=2), IntDistribution(1, 100, log=True),
    FloatDistribution(0.0, 1.0), FloatDistribution(1e-5, 1.0, log=True), FloatDistribution(-10.2, 10.2, step=0.1),
    FloatDistribution(0.0, 1.0, step=0.25), FloatDistribution(2.0, 2.0), CategoricalDistribution((None, "a", 1)),
])
def test_value_grid_holds_values_of_the_distribution(dist):
    values = value_grid(dist, bins=10)
    assert 1 <= len(values) <= max(10, len(getattr(dist, "choices", ())))
    assert all(dist._contains(dist.to_internal_repr(v)) for v in values)
    if not isinstance(dist, CategoricalDistribution):
        assert min(values) == dist.low and max(values) == pytest.approx(dist.high, abs=dist.step or 0)
        assert len(set(values)) == len(values)
    if isinstance(dist, IntDistribution) and not dist.log and (dist.high - dist.low) // dist.step < 10:
        assert list(values) == list(range(dist.low, dist.high + 1, dist.step))  # small ranges: every value


def test_log_probabilities_are_exact_also_for_a_conditional_space():
    """Summed over every architecture of the space, the probabilities are 1."""
    for space, archs in [(TINY, [dict(zip(("pos0.op", "pos1.op"), ops, strict=True))
                                 for ops in itertools.product(TINY.ops, repeat=2)]),
                         (Conditional(), list(Conditional().all_archs()))]:
        controller = Controller(space, seed=0)
        with torch.no_grad():
            total = sum(math.exp(float(controller.log_prob(a))) for a in archs)
        assert total == pytest.approx(1.0, abs=1e-5), type(space).__name__


@pytest.mark.parametrize("space", [TINY, Conditional(), MobileSpace(), LayersSpace(max_layers=4)],
                         ids=lambda s: type(s).__name__)
def test_samples_are_what_the_space_suggest_records(space):
    controller = Controller(space, seed=1)
    for arch in controller.sample(20):
        assert space.suggest(optuna.trial.FixedTrial(arch)) == arch  # exactly the decisions suggest asks
    marginals = controller.marginals(16)
    assert set(marginals) <= set(space.distributions())
    assert all(sum(p) == pytest.approx(1.0, abs=1e-4) for p in marginals.values())


def test_policy_gradient_raises_the_probability_of_the_rewarded_architecture():
    target = {"pos0.op": "skip", "pos1.op": "zero"}
    controller = Controller(TINY, seed=0)
    with torch.no_grad():
        before = math.exp(float(controller.log_prob(target)))
    for _ in range(20):  # reward 1 for the target, 0 for every other architecture
        archs = controller.sample(8)
        controller.update(archs, [float(a == target) for a in archs])
    with torch.no_grad():
        after = math.exp(float(controller.log_prob(target)))
    assert before < 0.2 and after > 0.6, (before, after)
    assert controller.sample(20).count(target) >= 10


def test_one_update_moves_probability_from_unrewarded_to_rewarded():
    controller = Controller(NanoSpace(), seed=0)
    target, *others = controller.sample(5)
    with torch.no_grad():
        before = [float(controller.log_prob(a)) for a in [target, *others]]
    stats = controller.update([target, *others], [1.0, 0.0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        after = [float(controller.log_prob(a)) for a in [target, *others]]
    assert after[0] > before[0]
    assert sum(after[1:]) < sum(before[1:])
    assert stats["baseline"] == pytest.approx(0.2)  # the first batch's mean starts the baseline
    assert float(controller.baseline) == pytest.approx(0.2)  # decay * 0.2 + (1 - decay) * 0.2
    controller.update([target], [1.0])
    assert float(controller.baseline) == pytest.approx(0.95 * 0.2 + 0.05 * 1.0)
    assert "baseline" in controller.state_dict()


def test_same_seed_same_samples():
    assert Controller(NanoSpace(), seed=3).sample(5) == Controller(NanoSpace(), seed=3).sample(5)
    assert Controller(NanoSpace(), seed=3).sample(5) != Controller(NanoSpace(), seed=4).sample(5)


def test_a_mapping_of_distributions_asks_everything_and_scores_what_is_given():
    dists = {"a": CategoricalDistribution((1, 2)), "b": FloatDistribution(0.0, 1.0)}
    controller = Controller(dists, seed=0, bins=5)
    arch = controller.sample(1)[0]
    assert set(arch) == {"a", "b"} and arch["b"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    with torch.no_grad():
        assert float(controller.log_prob({"a": 1})) < 0  # a missing decision is skipped
        assert float(controller.log_prob({"a": 1, "b": 0.26})) == pytest.approx(
            float(controller.log_prob({"a": 1, "b": 0.25})))  # nearest grid value


def test_bad_inputs():
    class Liar(Conditional):
        def distributions(self):
            return {"depth": IntDistribution(1, 2)}  # forgets the layers' decisions

    with pytest.raises(UserError, match="does not list"):
        Controller(Liar(), seed=0).sample(1)
    with pytest.raises(UserError, match="lacks decision 'pos1.op'"):
        Controller(TINY).log_prob({"pos0.op": "skip"})
    with pytest.raises(UserError, match="bins >= 2"):
        Controller(TINY, bins=1)
    with pytest.raises(UserError, match="at least one decision"):
        Controller({})
    with pytest.raises(ValueError, match="finite"):
        Controller(TINY).update([{"pos0.op": "skip", "pos1.op": "skip"}], [math.nan])
