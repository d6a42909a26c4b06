"""The graph encoding of every space, the SVG pictures drawn from it, the trial artifacts (pictures and
kept weights) and the feasibility the dashboard is shown."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import networkx as nx
import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
from optuna_dashboard import get_note, save_note

import nasopt
from nasopt.analysis._dashboard import WIDTH, FeasibilityView, artifact_folder
from nasopt.artifacts._graph import arch_graph
from nasopt.artifacts._inherit import load_weights
from nasopt.artifacts._notes import TrialRef
from nasopt.artifacts._pictures import (
    PICTURE_ATTR,
    draw_missing,
    keep_weights,
    picture_ids,
    picture_svg,
    save_picture,
)
from nasopt.keys import WEIGHTS_ATTR
from nasopt.oneshot import DARTS
from nasopt.search_spaces.conv1d import Conv1dSpace
from nasopt.search_spaces.darts_cell import DartsCellSpace
from nasopt.search_spaces.layers import LayersSpace
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.search_spaces.nano import NanoSpace
from nasopt.search_spaces.nb201 import NB201Space
from nasopt.space import random_arch
from nasopt.storage import open_storage

SPACES = {  # space, input shape
    "nano": (NanoSpace(C=8), (1, 8, 8)),
    "mobile": (MobileSpace(stages=3, max_depth=3), (1, 8, 8)),
    "layers": (LayersSpace(), (1, 8, 8)),
    "nb201": (NB201Space(C=8, N=1), (1, 8, 8)),
    "darts_cell": (DartsCellSpace(), (1, 8, 8)),
    "conv1d": (Conv1dSpace(), (1, 40)),
}


@pytest.mark.parametrize("name", list(SPACES))
def test_every_space_becomes_a_dag_with_ops_and_shapes(name):
    space, shape = SPACES[name]
    for seed in range(3):
        arch = random_arch(space, seed=seed)
        g = arch_graph(arch, space, input_shape=shape)
        assert nx.is_directed_acyclic_graph(g) and g.graph["layout"] in ("cells", "chain")
        ops = [d for _, d in g.nodes(data=True) if d["kind"] == "op"]
        assert ops and all(isinstance(d["op"], str) and d["label"] for d in ops)
        assert all(d["shape"] is not None or d.get("dead") for _, d in g.nodes(data=True)), name  # all traced
        assert {d["decision"] for d in ops if d["decision"]} <= set(arch)  # nodes name the params they come from
        assert g.graph["title"] == space.describe(arch)
        # the same structure from the params alone (a stored trial), only without shapes
        bare = arch_graph(arch)
        assert sorted(bare.nodes) == sorted(g.nodes) and sorted(bare.edges) == sorted(g.edges)


def test_the_graph_follows_the_architecture():
    space = DartsCellSpace(C=4, layers=3)
    g = arch_graph(space.to_arch("DARTS_V2"), space, input_shape=(3, 32, 32))
    normal = [d for _, d in g.nodes(data=True) if d["group"] == "normal" and d["kind"] == "op"]
    assert len(normal) == 8 and sum(d["op"] == "sep_conv_3x3" for d in normal) == 5
    assert g.nodes["normal/c_k"]["shape"] == (16, 32, 32) and g.nodes["reduce/c_k"]["shape"] == (32, 16, 16)
    assert g.has_edge("normal/c_k-2", "normal/3.op0") and g.has_edge("normal/0", "normal/3.op1")  # skip@0, d3@2
    mobile = MobileSpace(stages=2, max_depth=2, kernels=(3, 5), expands=(1, 6))
    arch = {"width": 1.0, "stage1.depth": 1, "stage1.block0.kernel": 5, "stage1.block0.expand": 6,
            "stage2.depth": 2, "stage2.block0.kernel": 3, "stage2.block0.expand": 1,
            "stage2.block1.kernel": 5, "stage2.block1.expand": 1}
    g = arch_graph(arch, mobile, input_shape=(1, 8, 8))
    blocks = [d for _, d in g.nodes(data=True) if d["kind"] == "op"]
    assert [(d["kernel"], d["expand"], d["stride"], d["residual"]) for d in blocks] == [
        (5, 6, 2, False), (3, 1, 2, False), (5, 1, 1, True)]  # 8x8 input: both stages stride (strides_for)
    assert [d["shape"] for d in blocks] == [(16, 4, 4), (24, 2, 2), (24, 2, 2)]
    layers = arch_graph({"n_layers": 2, "layer0.type": "conv", "layer0.filters": 16, "layer0.kernel": 3,
                         "layer0.skip": True, "layer1.type": "maxpool", "dense.units": 0})
    assert layers.has_edge("input", "layer0.add") and layers.nodes["layer1"]["op"] == "maxpool3x3"
    nb = arch_graph(NB201Space.from_string("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|"
                                           "nor_conv_1x1~2|"))
    assert sum(d.get("dead", False) for _, d in nb.nodes(data=True)) == 2
    assert arch_graph({"lr": 0.1, "act": "relu"}).graph["layout"] == "chain"  # an unknown space: its decisions


def test_pictures_are_svg_documents_of_the_graph():
    space, shape = SPACES["darts_cell"]
    arch = random_arch(space, seed=0)
    svg = picture_svg(arch, space, input_shape=shape)
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "normal cell" in texts and "reduction cell" in texts
    assert all(arch[f"normal.n{k}.op0"] in texts for k in range(4))
    assert "8\u00d78\u00d78" in texts  # shapes under the op names
    assert "<style" not in svg  # inline in an HTML report, a style block would restyle the page
    mobile = picture_svg(random_arch(MobileSpace(), seed=0), MobileSpace(), input_shape=(1, 8, 8))
    assert "stage1" in mobile and "MBConv k" in mobile


def _study(tmp_path, directions=("maximize", "minimize")):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=False)
    study = optuna.create_study(storage=storage, directions=list(directions))
    (tmp_path / "artifacts").mkdir()
    return study, FileSystemArtifactStore(str(tmp_path / "artifacts"))


def test_a_running_trial_gets_its_picture_and_a_non_dominated_one_its_weights(tmp_path, digits_task):
    study, store = _study(tmp_path)
    space = NanoSpace(C=4)
    models = {}

    def objective(trial):
        arch = space.suggest(trial)
        assert save_picture(trial, space, arch, store, task=digits_task)
        models[trial.number] = model = space.build(arch, digits_task)
        values = [0.5, 100.0] if trial.number != 1 else [0.4, 200.0]  # trial 1 is dominated by trial 0
        keep_weights(trial, model, values, store)
        return values

    study.optimize(objective, n_trials=3)
    trials = study.get_trials()
    for t in trials:
        metas = get_all_artifact_meta(t, storage=study._storage)
        pictures = [m for m in metas if m.filename.endswith("_architecture.svg")]
        assert len(pictures) == 1 and pictures[0].mimetype == "image/svg+xml"
        assert t.user_attrs[PICTURE_ATTR] == pictures[0].artifact_id == picture_ids(study, t)[0]
        with store.open_reader(pictures[0].artifact_id) as f:
            svg = f.read().decode()
        assert f"trial {t.number}: {t.user_attrs.get('arch', space.describe(t.params))}" in svg
        assert "4\u00d78\u00d78" in svg  # shapes from the task: 4 channels on 8x8 digits
    assert [WEIGHTS_ATTR in t.user_attrs for t in trials] == [True, False, True]  # 2 ties with 0: not dominated
    weights = load_weights(trials[0].user_attrs[WEIGHTS_ATTR], store)
    assert all(torch.equal(weights[k], v) for k, v in models[0].state_dict().items())


def test_pictures_never_fail_a_trial(tmp_path):
    study, store = _study(tmp_path)

    class Broken:
        def describe(self, arch):
            raise RuntimeError("no")

    trial = study.ask()
    assert save_picture(trial, Broken(), {"x": 1}, store) is None
    in_memory = optuna.create_study().ask()  # no file storage and no folder given: nothing to write to
    assert save_picture(in_memory, NanoSpace(), random_arch(NanoSpace(), 0)) is None


def test_draw_missing_gives_finished_trials_a_picture_the_dashboard_lists(tmp_path):
    study, store = _study(tmp_path)
    space = NanoSpace(C=4)
    dists = space.distributions()
    for seed in range(3):
        study.add_trial(optuna.trial.create_trial(params=random_arch(space, seed), distributions=dists,
                                                  values=[0.1 * seed, 10.0]))
    assert draw_missing(study, store, space) == 3
    assert draw_missing(study, store, space) == 0  # idempotent
    attrs = study._storage.get_study_system_attrs(study._study_id)
    for t in study.get_trials():
        (artifact_id,) = picture_ids(study, t)
        meta = json.loads(attrs[f"dashboard:artifacts:{t._trial_id}:{artifact_id}"])
        assert meta["mimetype"] == "image/svg+xml"
        with store.open_reader(artifact_id) as f:
            assert space.describe(t.params).encode() in f.read()


def test_the_dashboard_sees_list_form_constraints_and_a_feasible_attr(tmp_path):
    study, _ = _study(tmp_path)
    study.set_user_attr("nasopt", {"constraints": {"params": 1000}})
    for excess in (-500.0, 250.0):
        trial = study.ask()
        trial.set_constraint("params", excess)
        study.tell(trial, [0.5, 1000 + excess])
    study.add_trial(optuna.trial.create_trial(values=[0.1, 1.0]))  # unconstrained: left as it is
    view = FeasibilityView(study._storage)
    ok, over, free = view.get_all_trials(study._study_id, deepcopy=False)
    assert ok.system_attrs["constraints"] == [-500.0] and ok.user_attrs["feasible"] == "yes"
    assert over.system_attrs["constraints"] == [250.0] and over.user_attrs["feasible"] == "no: params=1,250 > 1,000"
    assert "constraints" not in free.system_attrs and "feasible" not in free.user_attrs
    assert "constraints" not in study.get_trials()[0].system_attrs  # a view: nothing written
    assert view.get_trial(over._trial_id).system_attrs["constraints"] == [250.0]
    assert view.get_study_directions(study._study_id) == study.directions  # everything else passes through
    assert artifact_folder(f"sqlite:///{tmp_path / 'study.db'}") is None  # a viewer never creates the folder
    (tmp_path / "study.artifacts").mkdir()
    assert artifact_folder(f"sqlite:///{tmp_path / 'study.db'}") is not None


def _note(study, t):
    return get_note(TrialRef(study, t._trial_id))  # optuna-dashboard's own reader of a trial's note


def test_an_infeasible_trial_never_costs_a_feasible_one_its_weights(tmp_path, digits_task):
    """Optuna's best_trials holds the feasible front only; a feasible trial dominated by an infeasible one
    (trial 0: better values, a constraint over its limit) is on that front and keeps its weights."""
    study, store = _study(tmp_path)
    space = NanoSpace(C=4)

    def objective(trial):
        arch = space.suggest(trial)
        trial.set_constraint("int8_kb", 1.0 if trial.number == 0 else -1.0)  # only trial 0 is infeasible
        values = [0.9, 50.0] if trial.number == 0 else [0.5, 100.0] if trial.number == 1 else [0.4, 200.0]
        keep_weights(trial, space.build(arch, digits_task), values, store)
        return values

    study.optimize(objective, n_trials=3)
    trials = study.get_trials()
    assert [t.number for t in study.best_trials] == [1]
    assert [WEIGHTS_ATTR in t.user_attrs for t in trials] == [True, True, False]  # 2: dominated by feasible 1


def test_the_trial_note_shows_the_picture_large_and_keeps_a_users_note(tmp_path):
    study, store = _study(tmp_path)
    space = NanoSpace(C=4)

    def objective(trial):
        if trial.number == 1:
            save_note(trial, "my own note")  # written before the picture: it stays
        save_picture(trial, space, space.suggest(trial), store)
        return [0.5, 1.0]

    study.optimize(objective, n_trials=2)
    first, mine = study.get_trials()
    url = f"/artifacts/{study._study_id}/{first._trial_id}/{first.user_attrs[PICTURE_ATTR]}"
    note = _note(study, first)
    # an image (as large as the page allows) that links to the file at full size
    assert f"[![architecture]({url})]({url})" in note and f"`trial 0: {space.describe(first.params)}`" in note
    assert _note(study, mine) == "my own note"
    # finished trials without a picture get picture and note; one with a picture but no note, the note
    dists = space.distributions()
    study.add_trial(optuna.trial.create_trial(params=random_arch(space, 5), distributions=dists, values=[0.1, 2.0]))
    study._storage.set_study_system_attr(study._study_id, f"dashboard:{first._trial_id}:note_ver", 0)
    for key in study._storage.get_study_system_attrs(study._study_id):
        if key.startswith(f"dashboard:{first._trial_id}:note_str:"):
            study._storage.set_study_system_attr(study._study_id, key, "")  # the first note, emptied
    assert draw_missing(study, store, space) == 1
    first, mine, older = study.get_trials()
    assert f"[![architecture]({url})]({url})" in _note(study, first) and _note(study, mine) == "my own note"
    (artifact_id,) = picture_ids(study, older)
    assert f"/artifacts/{study._study_id}/{older._trial_id}/{artifact_id}" in _note(study, older)


def test_the_dashboard_folds_long_attrs_to_the_width_of_the_page(tmp_path):
    study, _ = _study(tmp_path)
    ops = ["conv3x3", "conv5x5", "skip"]
    dists = {f"cell.edge{i}": optuna.distributions.CategoricalDistribution(ops) for i in range(12)}
    alphas = [{"epoch": e, "weights": {name: [0.2, 0.5 + 0.01 * e, 0.3 - 0.01 * e] for name in dists}}
              for e in range(1, 31)]
    curve = [{"epoch": e, "train_loss": 1 / e, "val_acc": 0.9 - 1 / (e + 1), "lr": 0.01} for e in range(1, 31)]
    latency = {"median_ms": 0.39, "iqr_ms": 0.05, "device": "cpu", "device_name": "AMD EPYC 7B13 64-Core Processor",
               "threads": 2, "input_shape": [1, 1, 8, 8], "torch": "2.5.1+cpu"}
    attrs = {"arch": "cell:c3-c5", "params": 5618, "alphas": alphas, "curve": curve, "latency": latency,
             "note": "x" * 300}
    study.add_trial(optuna.trial.create_trial(params=dict.fromkeys(dists, "conv5x5"), distributions=dists,
                                              values=[0.9, 5618.0], user_attrs=attrs))
    (shown,) = FeasibilityView(study._storage).get_all_trials(study._study_id)
    lines = shown.user_attrs
    assert all(len(f"{k} {v}") <= WIDTH for k, v in lines.items()), [k for k, v in lines.items() if len(f"{k} {v}") > WIDTH]
    assert lines["arch"] == "cell:c3-c5" and lines["params"] == 5618  # short ones as they are
    assert lines["alphas"].startswith("30 epochs; the weights of epoch 30")
    assert lines["alphas.cell.edge0"] == "conv5x5 0.80, conv3x3 0.20, skip 0.00"  # by name, largest first
    assert len([k for k in lines if k.startswith("alphas.")]) == 12
    assert lines["curve"].startswith("30 epochs; epoch 30: train_loss 0.03333, val_acc 0.8677")
    assert lines["latency.median_ms"] == 0.39 and lines["latency.input_shape"] == [1, 1, 8, 8]
    assert lines["note"].endswith("\u2026")
    assert study.get_trials()[0].user_attrs == attrs  # a view: storage keeps the full values
    assert FeasibilityView(study._storage).get_trial(shown._trial_id).user_attrs == lines


def test_a_gradient_run_lists_each_artifact_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    nasopt.run(nasopt.StudySpec(name="g", space=NanoSpace(C=4), dataset="digits", objectives={"accuracy": "maximize"},
                                strategy=DARTS(epochs=3, batch_size=64), train=nasopt.TrainConfig(epochs=1)),
               storage=url, progress=False)
    study = optuna.load_study(study_name="g", storage=url)
    (trial,) = study.get_trials()
    names = sorted(m.filename for m in get_all_artifact_meta(trial, storage=study._storage))
    # one checkpoint, rewritten each epoch (the best trial's weights are kept too)
    assert names == ["trial0_architecture.svg", "trial0_checkpoint.pt", "trial0_weights.pt"]
    store = artifact_folder(url)
    checkpoint = next(m for m in get_all_artifact_meta(trial, storage=study._storage) if m.filename.endswith("_checkpoint.pt"))
    assert checkpoint.mimetype == "application/octet-stream"
    with store.open_reader(checkpoint.artifact_id) as f:
        assert torch.load(f, weights_only=True)["epoch"] == 3  # the last epoch's
    assert sorted(p.name for p in (tmp_path / "g.artifacts").iterdir()) == sorted(
        m.artifact_id for m in get_all_artifact_meta(trial, storage=study._storage))  # no spare file left


def test_a_repeated_architecture_shows_the_originals_picture_in_its_note(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    spec = dict(name="r", space=NanoSpace(C=4), dataset="digits", objectives={"accuracy": "maximize"},
                train=nasopt.TrainConfig(epochs=1), sampler=optuna.samplers.RandomSampler(seed=0))
    nasopt.run(nasopt.StudySpec(**spec, n_trials=1), storage=url, progress=False)
    study = optuna.load_study(study_name="r", storage=url)
    study.enqueue_trial(study.trials[0].params)  # the same architecture again: its result is reused
    nasopt.run(nasopt.StudySpec(**spec, n_trials=2), storage=url, progress=False)
    first, again = optuna.load_study(study_name="r", storage=url).get_trials()
    assert again.user_attrs["reused_from"] == 0 and again.user_attrs[PICTURE_ATTR] == first.user_attrs[PICTURE_ATTR]
    url = f"/artifacts/{study._study_id}/{again._trial_id}/{first.user_attrs[PICTURE_ATTR]}"
    assert f"[![architecture]({url})]({url})" in _note(study, again)  # served under the repeat's own id
