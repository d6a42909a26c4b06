"""Hard limits known to the samplers: a study's counted limits (params, MACs, flash, SRAM) reach its sampler,
which then proposes fewer architectures that are rejected before training.

Through the real command: `nasopt run` in a subprocess on nano-bench (table look-ups: a trial takes
milliseconds) into a real SQLite file, once with `constraints={"params": 2000}` (189 of the 625 nano-bench
architectures meet it) and once without; the second run's trials say how many architectures the same
sampler, not told of the limit, proposes over it. Then through `nasopt.run` on real data (digits), where the
limit is counted on the built network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import nasopt
from nasopt.data import load_task
from nasopt.errors import UserError
from nasopt.measure import count_params
from nasopt.samplers import Limits, REASampler, WithinLimits, make_sampler, with_limits
from nasopt.search_spaces.nano import NanoSpace

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
LIMIT = 2000
N = 40

STUDY = """\
import nasopt
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(name="nb", space=NanoSpace(), dataset="nanobench", objectives={{"accuracy": "maximize"}},
                         constraints={constraints}, n_trials={n}, seed={seed})
"""


def run_cli(folder: Path, sampler: str, constraints: str, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    """`nasopt run` of a nano-bench study with `--set sampler=NAME`; the trials it stored."""
    folder.mkdir()
    (folder / "nb.py").write_text(STUDY.format(constraints=constraints, n=N, seed=seed))
    ran = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", "nb.py", "--set", f"sampler={sampler}", "-q"],
                         cwd=folder, env=ENV, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    study = optuna.load_study(study_name="nb", storage=f"sqlite:///{folder / 'nasopt.db'}")
    return study.get_trials(deepcopy=False)


def over(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials whose architecture breaks the limit (each stores its params, pruned or not)."""
    return sum(t.user_attrs["params"] > LIMIT for t in trials)


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2", "rea", "pnas", "botorch"])
def test_a_sampler_told_of_the_limit_proposes_fewer_architectures_over_it(tmp_path, sampler):
    if sampler == "botorch":
        pytest.importorskip("botorch")
    told = run_cli(tmp_path / "told", sampler, f'{{"params": {LIMIT}}}')
    blind = run_cli(tmp_path / "blind", sampler, "{}")
    assert len(told) == len(blind) == N
    rejected = [t for t in told if t.state == TrialState.PRUNED]
    # every trial over the limit was rejected before training, with its reason and constraint stored
    assert {t.number for t in rejected} == {t.number for t in told if t.user_attrs["params"] > LIMIT}
    for t in rejected:
        assert t.user_attrs["pruned_reason"].startswith("constraint violated before training: params=")
        assert t.constraints["params"] == t.user_attrs["params"] - LIMIT > 0
    assert over(blind) >= N // 4  # the premise: not told, the sampler spends a share of the budget over it
    assert over(told) <= N // 20 < over(blind)


@pytest.mark.parametrize("sampler", ["tpe", "rea"])
def test_a_seeded_study_with_a_limit_proposes_the_same_architectures_again(tmp_path, sampler):
    first = run_cli(tmp_path / "a", sampler, f'{{"params": {LIMIT}}}', seed=3)
    again = run_cli(tmp_path / "b", sampler, f'{{"params": {LIMIT}}}', seed=3)
    assert [t.params for t in first] == [t.params for t in again]
    assert len({tuple(sorted(t.params.items())) for t in first}) > 5  # not one architecture over and over


def test_limits_are_counted_on_the_built_network_on_real_data(tmp_path, one_thread):
    """digits, NanoSpace(C=4): the limit is counted on the network the trial builds. RandomSampler(seed=0)
    draws the same architectures whatever the results, so an ask-only study shows what it proposes untold."""
    space, limit, n = NanoSpace(C=4), 600, 4
    untold = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    task = load_task("digits", seed=0)
    sizes = [count_params(space.build(space.suggest(untold.ask()), task)) for _ in range(n)]
    assert sum(s > limit for s in sizes) >= 2  # the premise: untold, half its proposals are over the limit
    spec = nasopt.StudySpec(name="real", space=space, dataset="digits", constraints={"params": limit},
                            sampler=optuna.samplers.RandomSampler(seed=0), n_trials=n,
                            train=nasopt.TrainConfig(epochs=1, batch_size=128),
                            measure=nasopt.MeasureConfig(warmup=0, repeats=3))
    study = nasopt.run(spec, storage=f"sqlite:///{tmp_path / 'real.db'}", progress=False)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * n
    for t in study.trials:
        assert t.user_attrs["params"] <= limit
        assert t.user_attrs["params"] == count_params(space.build(t.params, task))
        assert t.user_attrs["strategy"] == "RandomSampler"  # the sampler chosen, not the wrapper around it


def test_with_limits_hands_nasopt_samplers_the_limits_and_wraps_the_others():
    space = NanoSpace()
    counted: list[dict] = []

    def count(arch):
        counted.append(dict(arch))
        return {"params": 1000.0}

    limits = Limits({"params": LIMIT}, count, space)
    rea = REASampler(seed=0, population_size=2, sample_size=1)
    assert with_limits(rea, limits) is rea  # filters its own children
    study = optuna.create_study(direction="maximize", sampler=rea)
    arch = space.suggest(study.ask())
    assert counted == [arch]  # the child was counted before it was proposed
    tpe = make_sampler("tpe", seed=0, space=space)
    wrapped = with_limits(tpe, limits)
    assert isinstance(wrapped, WithinLimits) and wrapped.sampler is tpe
    assert with_limits(wrapped, limits).sampler is tpe  # never wrapped twice
    assert with_limits(tpe, None) is tpe and with_limits(wrapped, None) is tpe
    assert with_limits(rea, None) is rea  # reused by a study without limits, it forgets the earlier study's
    space.suggest(study.ask())
    assert len(counted) == 1


def test_limits_refuse_what_cannot_be_counted_before_training():
    with pytest.raises(UserError, match="cannot count 'latency_ms' before training"):
        Limits({"latency_ms": 5.0}, lambda arch: {}, NanoSpace())
    with pytest.raises(UserError, match="positive number"):
        Limits({"params": 0}, lambda arch: {}, NanoSpace())


def test_an_architecture_that_cannot_be_built_never_fits():
    def count(arch):
        raise RuntimeError("no such network")

    limits = Limits({"params": LIMIT}, count, NanoSpace())
    arch = {f"pos{i}.op": "zero" for i in range(4)}
    assert limits.excess(arch) == float("inf") and not limits.fits(arch)
