"""Zero-cost proxies as model inputs of PNAS and BoTorch (`proxy_inputs=...`, issue 18 item 2).

The shortlist the model ranks best without proxies is predicted again with them; only the shortlist and the
finished trials are scored, each architecture once; a seed repeats; without a scoring rule (PNAS: or with an
architecture that cannot be scored) the sampler is exactly the one without proxies; an oracle proxy finds
the optimum sooner; `nasopt run` hands the rule over; bad options are one-line errors.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import optuna
import pytest

from nasopt.errors import UserError
from nasopt.nanobench import load
from nasopt.samplers import BoTorchPoolSampler, PNASSampler
from nasopt.samplers._pnas import INFO_KEY
from nasopt.search_spaces.nano import NanoSpace
from nasopt.study._proxies import proxy_scorer
from tests.cli_errors import user_error

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
FAST = {"n_candidates": 150, "train_steps": 60, "ensemble": 3, "n_startup_trials": 4}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def key(arch) -> str:
    return json.dumps(dict(arch), sort_keys=True)


class Counting:
    """A scoring rule that counts the architectures it scores."""

    def __init__(self, rule) -> None:
        self.rule, self.calls = rule, []

    def __call__(self, arch):
        self.calls.append(key(arch))
        return self.rule(arch)


def search(trials: int, seed: int, scorer=None, kind: str = "pnas", **options) -> tuple[list[str], list[dict]]:
    """(architectures in trial order, each trial's pnas:info) of a nano-bench search by PNAS (or BoTorch)."""
    bench, space = load(), NanoSpace()
    sampler = (PNASSampler(space, seed=seed, **FAST, **options) if kind == "pnas"
               else BoTorchPoolSampler(space=space, seed=seed, n_startup_trials=4, n_candidates=256, n_mutations=128,
                                       **options))
    if scorer is not None:
        sampler.use_proxies(scorer)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(trials):
        trial = study.ask()
        arch = space.suggest(trial)
        study.tell(trial, bench.query(arch, seed)["val_acc"])
    return [key(t.params) for t in study.trials], [t.system_attrs.get(INFO_KEY, {}) for t in study.trials]


def test_only_the_shortlist_and_the_trials_are_scored_once_each_and_a_seed_repeats(one_thread):
    real = proxy_scorer(NanoSpace(), load(), ["naswot", "synflow"])  # the runner's rule (digits, fixed seed)
    scorer = Counting(real)
    archs, infos = search(12, 0, scorer, proxy_inputs=["naswot", "synflow"], proxy_shortlist=8)
    assert len(scorer.calls) == len(set(scorer.calls))  # each architecture scored once
    predicted = [i for i in infos if i["stage"] == "predictor"]
    assert len(predicted) == 12 - FAST["n_startup_trials"]
    assert all(i["proxy_inputs"] == ["naswot", "synflow"] for i in predicted)
    assert all("proxy_inputs" not in i for i in infos if i["stage"] == "startup")
    assert len(scorer.calls) <= 8 * len(predicted) + 12  # never the whole pool of 150+ per trial
    assert set(archs[: 11]) <= set(scorer.calls)  # the finished trials are inputs too
    again, _ = search(12, 0, Counting(real), proxy_inputs=["naswot", "synflow"], proxy_shortlist=8)
    assert again == archs


def test_without_a_rule_or_with_an_unscorable_architecture_it_is_the_sampler_without_proxies(one_thread):
    plain, _ = search(10, 3)
    unruled, infos = search(10, 3, None, proxy_inputs=["naswot"])
    assert unruled == plain and all(i.get("proxy_inputs", []) == [] for i in infos)
    unscorable, infos = search(10, 3, lambda arch: None, proxy_inputs=["naswot"])
    assert unscorable == plain and all(i.get("proxy_inputs", []) == [] for i in infos)


def test_an_oracle_proxy_finds_the_optimum_sooner(one_thread):
    """A 'proxy' that is the architecture's trained accuracy: the predictor must use what the column says."""
    bench = load()
    optima = {key(a) for a in bench.optima}
    oracle = {"naswot": None}

    def rule(arch):
        oracle["naswot"] = bench.mean_val_acc(arch)
        return dict(oracle)

    def first_hit(archs: list[str]) -> int:
        return next((n for n, a in enumerate(archs, 1) if a in optima), len(archs) + 1)

    with_oracle = [first_hit(search(40, s, rule, proxy_inputs=["naswot"], proxy_shortlist=32)[0]) for s in range(5)]
    plain = [first_hit(search(40, s)[0]) for s in range(5)]
    assert statistics.median(with_oracle) < statistics.median(plain), (with_oracle, plain)
    assert max(with_oracle) <= 40, with_oracle


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UserError, match=r"unknown zero-cost proxy 'nawsot' in proxy_inputs; known proxies: naswot"):
        PNASSampler(NanoSpace(), proxy_inputs=["nawsot"])
    with pytest.raises(UserError, match=r"`proxy_shortlist >= 2` must hold, but got proxy_shortlist=1"):
        PNASSampler(NanoSpace(), proxy_inputs=["naswot"], proxy_shortlist=1)
    assert PNASSampler(NanoSpace(), proxy_inputs="naswot").proxy_inputs == ["naswot"]  # one name, not letters
    with pytest.raises(UserError, match=r"`proxy_inputs` must be proxy names like \('synflow', 'naswot'\), but got \[3\]"):
        PNASSampler(NanoSpace(), proxy_inputs=[3])
    with pytest.raises(UserError, match=r"names no proxy"):
        PNASSampler(NanoSpace(), proxy_inputs=[])
    with pytest.raises(UserError, match=r"needs the space"):
        PNASSampler(None, proxy_inputs=["naswot"])
    with pytest.raises(UserError, match=r"BoTorchPoolSampler\(proxy_inputs=...\) scores built networks: it needs the space"):
        BoTorchPoolSampler(proxy_inputs=["naswot"])
    with pytest.raises(UserError, match=r"unknown zero-cost proxy 'snap'"):
        BoTorchPoolSampler(space=NanoSpace(), proxy_inputs=["snap"])
    study = tmp_path / "bad.py"
    study.write_text("import nasopt\nfrom nasopt.samplers import PNASSampler\nfrom nasopt.search_spaces.nano import "
                     "NanoSpace\nstudy = nasopt.StudySpec(name='bad', space=NanoSpace(C=4), n_trials=2, sampler="
                     "PNASSampler(NanoSpace(C=4), proxy_inputs=['synflo']))\n")
    user_error(capsys, ["run", str(study), "--storage", f"sqlite:///{tmp_path / 'bad.db'}"],
               "unknown zero-cost proxy 'synflo'", "known proxies")
    assert not list(tmp_path.glob("*.db*"))


def test_nasopt_run_hands_the_sampler_its_scoring_rule(tmp_path):
    (tmp_path / "zc.py").write_text(
        "import nasopt\nfrom nasopt.samplers import PNASSampler\nfrom nasopt.search_spaces.nano import NanoSpace\n"
        "space = NanoSpace(C=4)\n"
        "study = nasopt.StudySpec(name='zc', space=space, dataset='digits', n_trials=4,\n"
        "    sampler=PNASSampler(space, n_startup_trials=2, n_candidates=40, train_steps=20, ensemble=2, seed=0,\n"
        "                        input_shape=(1, 8, 8), proxy_inputs=('naswot',), proxy_shortlist=4),\n"
        "    train=nasopt.TrainConfig(epochs=1, batch_size=128), measure=nasopt.MeasureConfig(warmup=0, repeats=3))\n")
    result = subprocess.run([sys.executable, "-m", "nasopt.cli", "run", "zc.py", "--storage", "sqlite:///zc.db", "-q"],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="zc", storage=f"sqlite:///{tmp_path / 'zc.db'}")
    infos = [t.system_attrs[INFO_KEY] for t in study.trials if "reused_from" not in t.user_attrs]
    assert [i["proxy_inputs"] for i in infos if i["stage"] == "predictor"] == [["naswot"]] * 2


def test_botorch_scores_its_shortlist_again_with_the_proxies(one_thread):
    real = proxy_scorer(NanoSpace(), load(), ["naswot", "synflow"])
    scorer = Counting(real)
    archs, _ = search(10, 0, scorer, "botorch", proxy_inputs=["naswot", "synflow"], proxy_shortlist=8)
    assert scorer.calls and len(scorer.calls) == len(set(scorer.calls))  # scored, each architecture once
    assert len(scorer.calls) <= 8 * 6 + 10  # the shortlist of each GP trial and the finished trials only
    assert len(set(archs)) == len(archs)  # never an architecture twice
    assert search(10, 0, Counting(real), "botorch", proxy_inputs=["naswot", "synflow"], proxy_shortlist=8)[0] == archs
    plain, _ = search(10, 0, None, "botorch")
    assert search(10, 0, None, "botorch", proxy_inputs=["naswot"])[0] == plain  # no rule: the plain sampler
    assert archs != plain


def test_botorch_with_an_oracle_proxy_finds_the_optimum_sooner(one_thread):
    bench = load()
    optima = {key(a) for a in bench.optima}

    def first_hit(archs: list[str]) -> int:
        return next((n for n, a in enumerate(archs, 1) if a in optima), len(archs) + 1)

    rule = lambda arch: {"naswot": bench.mean_val_acc(arch)}  # noqa: E731
    with_oracle = [first_hit(search(30, s, rule, "botorch", proxy_inputs=["naswot"], proxy_shortlist=128)[0])
                   for s in range(5)]
    plain = [first_hit(search(30, s, None, "botorch")[0]) for s in range(5)]
    assert statistics.median(with_oracle) < statistics.median(plain), (with_oracle, plain)


WEIGHTLESS = '''
import numpy as np
import nasopt
from torch import nn
from nasopt.samplers import PNASSampler


class Pools:
    """One decision; its networks have no conv or linear weight (nothing for snip to score)."""

    def distributions(self):
        import optuna
        return {"size": optuna.distributions.CategoricalDistribution([10])}

    def suggest(self, trial):
        return {"size": trial.suggest_categorical("size", [10])}

    def build(self, arch, task, choose=None):
        return nn.Sequential(nn.Flatten(), nn.AdaptiveAvgPool1d(arch["size"]))

    def encode(self, arch):
        return np.ones(1, dtype=np.float32)

    def describe(self, arch):
        return f"pool{arch['size']}"


space = Pools()
study = nasopt.StudySpec(name="weightless", space=space, dataset="digits", n_trials=2,
                         sampler=PNASSampler(space, proxy_inputs=["snip"]))
'''


def test_a_proxy_the_space_cannot_have_is_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "w.py").write_text(WEIGHTLESS)
    user_error(capsys, ["run", str(tmp_path / "w.py"), "--storage", f"sqlite:///{tmp_path / 'w.db'}"],
               "zero-cost proxy 'snip' needs conv or linear weights")
    assert not list(tmp_path.glob("*.db*"))
