"""`nasopt report`: one self-contained HTML file with every view of a study, through the CLI."""

from __future__ import annotations

import datetime
import re
import warnings

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from nasopt.analysis import _plot_archs as arch_plots
from nasopt.analysis._report import search_metrics
from nasopt.artifacts._inherit import artifact_store_for
from nasopt.artifacts._pictures import draw_missing
from nasopt.cli.main import main
from nasopt.search_spaces.nano import NANO_OPS, NanoSpace
from nasopt.space import random_arch
from nasopt.storage import open_storage

SPACE = NanoSpace(C=4)
LIMIT = 2000


def _trial(arch, values, strategy, number, *, params_count, alphas=None, minutes=1.0):
    """A finished trial as nasopt writes it: objectives, hardware metrics, curve, strategy, constraint."""
    attrs = {"arch": SPACE.describe(arch), "strategy": strategy, "params": params_count, "latency_ms": 0.1,
             "latency": {"median_ms": 0.1, "device": "cpu"}}
    if values is not None:
        attrs["curve"] = [{"epoch": e, "val_acc": values[0] * e / 3} for e in (1, 2, 3)]
    if alphas is not None:
        attrs["alphas"] = alphas
    t = optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE if values is not None else optuna.trial.TrialState.PRUNED,
        values=values, params=arch, distributions=SPACE.distributions(), user_attrs=attrs,
        system_attrs={"constraints:params": params_count - LIMIT})
    start = datetime.datetime(2026, 1, 1) + datetime.timedelta(minutes=10 * number)
    t.datetime_start, t.datetime_complete = start, start + datetime.timedelta(minutes=minutes)
    return t


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    """Sampled trials of two strategies (the last one over the params limit), and a gradient trial."""
    path = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{path / 'nasopt.db'}"
    study = optuna.create_study(study_name="tiny", storage=open_storage(url, heartbeat=False),
                                directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "params"])
    study.set_user_attr("nasopt", {"space": "NanoSpace", "dataset": "digits", "constraints": {"params": LIMIT}})
    for n in range(8):
        arch = random_arch(SPACE, seed=n)
        count = 300 + 250 * n
        values = None if count > LIMIT else [0.3 + 0.07 * n - 0.05 * (n % 3), float(count)]
        study.add_trial(_trial(arch, values, "RandomSampler" if n < 5 else "TPESampler", n, params_count=count))
    alphas = [{"epoch": e, "weights": {f"pos{i}.op": [0.2 + 0.01 * e * (k == i) for k in range(5)] for i in range(4)}}
              for e in (1, 2)]
    study.add_trial(_trial({f"pos{i}.op": NANO_OPS[i] for i in range(4)}, [0.8, 900.0], {"label": "darts"}, 8,
                           params_count=900, alphas=alphas, minutes=5.0))
    optuna.create_study(study_name="empty", storage=open_storage(url, heartbeat=False))
    return path, url


def test_search_metrics(study_db):
    _, url = study_db
    study = optuna.load_study(study_name="tiny", storage=url)
    m = search_metrics(study)
    assert m["trials"] == 9 and m["states"] == {"complete": 8, "pruned": 1} and m["infeasible"] == 1
    assert m["cpu_hours"] == pytest.approx((8 * 1 + 5) / 60) and m["gpu_hours"] == 0
    assert m["unique_architectures"] == len({repr(sorted(t.params.items())) for t in study.trials})
    assert 0 < m["mean_pairwise_distance"] <= 1 and m["best"]["accuracy"] == 0.8
    assert m["strategies"] == ["RandomSampler", "TPESampler", "darts"]
    assert arch_plots.hamming({"a": 1, "b": 2}, {"a": 1, "b": 3}) == 0.5
    assert arch_plots.hamming({"a": 1}, {"a": 1, "b": 3}) == 0.5  # a decision only one architecture has differs


def test_report_command_writes_one_self_contained_file(study_db, capsys):
    path, url = study_db
    out = path / "tiny.html"
    assert main(["report", "tiny", "--storage", url, "-o", str(out)]) == 0
    assert "written to" in capsys.readouterr().err
    text = out.read_text()
    assert "<script src=" not in text and 'src="http' not in text  # nothing to fetch: works offline
    assert text.count("<script") >= 10 and "plotly" in text[:20_000].lower()  # plotly.js itself is inline
    for section in ("summary", "pareto-set", "pareto", "pareto-time", "history", "strategies", "importance", "dna",
                    "ops", "landscape", "curves", "alphas"):
        body = re.search(f'<section id="{section}">(.*?)</section>', text, re.S)
        assert body and "Nothing to show" not in body.group(1), section
    plots_in = {s: len(re.findall('class="plotly-graph-div"', re.search(f'<section id="{s}">(.*?)</section>',
                                                                          text, re.S).group(1)))
                for s in ("pareto", "pareto-time", "history", "strategies", "alphas")}
    assert plots_in == {"pareto": 2, "pareto-time": 2, "history": 2, "strategies": 1, "alphas": 1}
    assert "infeasible" in text and "Pareto-optimal" in text  # the objective pairs mark both
    assert "0.2167 CPU hours" in text and "best accuracy" in text
    assert "conv3x3" in text and "<svg" in text  # the Pareto set's pictures, drawn from the params


def test_report_uses_the_stored_pictures_with_shapes(study_db, digits_task):
    path, url = study_db
    study = optuna.load_study(study_name="tiny", storage=url)
    store = artifact_store_for(url)  # creates nasopt.artifacts/ beside the database
    assert draw_missing(study, store, SPACE, task=digits_task) == 9
    out = path / "with_pictures.html"
    assert main(["report", "tiny", "--storage", url, "-o", str(out)]) == 0
    assert "4\u00d78\u00d78" in out.read_text()  # shapes, which only the stored pictures carry


def test_report_of_an_empty_study_and_bad_input(study_db, capsys, tmp_path):
    path, url = study_db
    assert main(["report", "empty", "--storage", url, "-o", str(path / "empty.html")]) == 0
    assert "Nothing to show" in (path / "empty.html").read_text()
    capsys.readouterr()
    assert main(["report", "nope", "--storage", url, "-o", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study 'nope'" in err and "tiny" in err
    assert main(["report", "tiny", "--storage", url, "-o", str(tmp_path / "missing" / "x.html")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "missing").exists()


def test_alpha_candidates_are_named_from_the_distributions():
    trial = optuna.trial.create_trial(
        params={"normal.n0.op0": "skip"}, distributions={"normal.n0.op0": CategoricalDistribution(["a", "skip"])},
        values=[1.0], user_attrs={"alphas": [{"epoch": 1, "weights": {"normal.n0.e1": [0.2, 0.3, 0.5],
                                                                     "normal.n0.op0": [0.5, 0.5]}}]})
    fig = arch_plots.alpha_evolution(trial)
    assert {d.name for d in fig.data} == {"none", "a", "skip"}


def test_the_report_prints_values_as_show_does(study_db, capsys, tmp_path):
    """The Pareto set in `nasopt show` and in the report: the same value, the same string (params as a count
    with separators, accuracy with 4 decimals), never `1.05e+03` beside `1,050`."""
    _, url = study_db
    assert main(["show", "tiny", "--storage", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    rows = [dict(zip(header, line.split(), strict=False)) for line in lines[2:] if line.strip()]
    assert rows and all(r["params"].isdigit() for r in rows)  # 900.0 reads 900
    assert main(["report", "tiny", "--storage", url, "-o", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    table = re.search('<section id="pareto-set">(.*?)</table>', text, re.S).group(1)
    for r in rows:
        assert f"<td>{r['number']}</td>" in table and f"<td>{r['accuracy']}</td><td>{r['params']}</td>" in table
    assert not re.search(r"<td>[0-9.]+e[+-]\d+</td>", table) and ".0</td>" not in table


def test_alpha_candidates_are_named_from_the_spaces_supernet():
    """A ProxylessNAS run on the mobile space weighs `mbconv_k3_e1` ... `skip` per block, which the trial's
    params (kernel, expand) do not name: the plot takes the op names from the study's stored space."""
    from nasopt.export._rebuild import ShapeTask, study_record
    from nasopt.search_spaces.mobile import MobileSpace
    from nasopt.study import StudySpec

    space = MobileSpace(stages=2, max_depth=2, kernels=(3, 5), expands=(1, 3))
    record = study_record(StudySpec(name="m", space=space, dataset="digits"), ShapeTask("digits", (1, 8, 8), 10))
    study = optuna.create_study()
    study.set_user_attr("nasopt", record)
    weights = {"stage1.block0": [0.25] * 4, "stage1.block1": [0.2] * 5}
    study.add_trial(optuna.trial.create_trial(values=[1.0], user_attrs={"alphas": [{"epoch": 1, "weights": weights}]}))
    trial = study.trials[0]
    assert {d.name for d in arch_plots.alpha_evolution(trial).data} == {"#0", "#1", "#2", "#3", "#4"}  # no study
    names = {d.name for d in arch_plots.alpha_evolution(trial, study=study).data}
    assert names == {"mbconv_k3_e1", "mbconv_k3_e3", "mbconv_k5_e1", "mbconv_k5_e3", "skip"}
