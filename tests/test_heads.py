"""The task's head: a dense (per-position) head where a space keeps a usable feature map, a one-line refusal
where it does not, the classification head unchanged, and the kind recorded by exports and studies."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest
import torch

from nasopt.artifacts import arch_graph
from nasopt.errors import UserError
from nasopt.export import describe_export, load_model, space_config, study_record, write_export
from nasopt.export._rebuild import ShapeTask, from_study
from nasopt.measure._latency_build import build_table
from nasopt.search_spaces import DENSE_SPACES, SPACES, make_space
from nasopt.search_spaces.darts_cell import DartsCellSpace
from nasopt.search_spaces.layers import LayersSpace
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.search_spaces.nano import NanoSpace
from nasopt.space import HEAD_KINDS, head_kind, random_arch

pytestmark = pytest.mark.usefixtures("one_thread")

# small settings: every space builds in milliseconds
SMALL = {"nb201": {"C": 4, "N": 1}, "darts_cell": {"C": 4, "layers": 3}, "conv1d": {"C": 4, "layers": 3},
         "nano": {"C": 8}, "mobile": {"widths": (0.5,)}}
REFUSE = f"; use {', '.join(DENSE_SPACES[:-1])} or {DENSE_SPACES[-1]}"


def shape_of(name: str) -> tuple[int, ...]:
    return (1, 64) if name == "conv1d" else (1, 16, 16)


def task(name: str, kind: str | None = "dense") -> SimpleNamespace:
    out = SimpleNamespace(input_shape=shape_of(name), num_classes=3)
    if kind is not None:
        out.kind = kind
    return out


def test_head_kind_defaults_to_classify_and_knows_the_task_kinds() -> None:
    from nasopt.data import KINDS

    assert HEAD_KINDS == KINDS
    assert head_kind(SimpleNamespace(input_shape=(1, 8, 8), num_classes=3)) == "classify"
    assert head_kind(ShapeTask("t", (1, 8, 8), 3)) == "classify"
    assert head_kind(ShapeTask("t", (1, 8, 8), 3, kind="dense")) == "dense"
    with pytest.raises(UserError, match="unknown task kind 'boxes'"):
        head_kind(SimpleNamespace(kind="boxes"))


@pytest.mark.parametrize("name", DENSE_SPACES)
def test_dense_head_gives_one_output_per_position_and_trains(name: str) -> None:
    space = make_space(name, **SMALL.get(name, {}))
    shape = shape_of(name)
    for seed in range(3):
        model = space.build(random_arch(space, seed=seed), task(name)).train()
        x = torch.randn(2, *shape)
        out = model(x)
        assert out.shape == (2, 3, *shape[1:])
        target = torch.randint(0, 3, (2, *shape[1:]))
        torch.nn.functional.cross_entropy(out, target).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}  # a DARTS cell may be
        assert all(torch.isfinite(g).all() for g in grads.values())  # unread by the next one: no grad there
        head = [n for n, _ in model.named_parameters() if n.startswith(("classifier.", "head."))]
        assert head and all(n in grads for n in head)


@pytest.mark.parametrize("name", [n for n in SPACES if n not in DENSE_SPACES])
def test_spaces_without_a_usable_feature_map_refuse_a_dense_task(name: str) -> None:
    space = make_space(name, **SMALL.get(name, {}))
    with pytest.raises(UserError) as info:
        space.build(random_arch(space, seed=0), task(name))
    message = str(info.value)
    assert message.startswith(f"space {name} cannot produce a dense (per-position) output: ")
    assert message.endswith(REFUSE) and "\n" not in message


def test_mobile_supernet_refuses_a_dense_task_too() -> None:
    from nasopt.space import fixed

    with pytest.raises(UserError, match="space mobile cannot produce a dense"):
        MobileSpace().supernet(task("mobile"), fixed)


def test_darts_auxiliary_head_is_refused_for_a_dense_task() -> None:
    space = DartsCellSpace(C=4, layers=3, auxiliary=True)
    arch = random_arch(space, seed=0)
    with pytest.raises(UserError, match=r"auxiliary=True\) cannot serve a dense .*set auxiliary=False"):
        space.build(arch, task("darts_cell"))
    assert space.build(arch, task("darts_cell", "classify")).auxiliary_head is not None


@pytest.mark.parametrize("name", SPACES)
def test_classify_and_regress_build_the_same_network_as_before(name: str) -> None:
    """A task without `kind` (every task before kinds) and one of kind classify or regress: one network,
    bit for bit (same parameters, keys and initial values), with (N, K) outputs."""
    space = make_space(name, **SMALL.get(name, {}))
    arch = random_arch(space, seed=1)
    states = []
    for kind in (None, "classify", "regress"):
        torch.manual_seed(0)
        model = space.build(arch, task(name, kind)).eval()
        states.append(model.state_dict())
        assert model(torch.randn(2, *shape_of(name))).shape == (2, 3)
    for state in states[1:]:
        assert list(state) == list(states[0])
        assert all(torch.equal(state[k], states[0][k]) for k in state)


def _export(space, arch: dict, shape: tuple[int, ...], folder, kind: str = "dense"):
    target = ShapeTask("tensors", shape, 3, kind=kind, target_shape=shape[1:])
    torch.manual_seed(0)
    model = space.build(arch, target).eval()
    record, manifest = describe_export(model, space, arch, space_config(space), target,
                                       weights={"source": "initialised", "trained": False})
    return model, write_export(folder, {"": (model, record, manifest)})


@pytest.mark.parametrize("name", ["layers", "conv1d"])
def test_a_dense_export_loads_back_to_the_same_network(name: str, tmp_path) -> None:
    """arch.json records the kind; load_model rebuilds the dense network (the upsampling path: layers pools,
    conv1d reduces twice), and its outputs are the exported module's."""
    if name == "layers":
        space = LayersSpace()
        arch = {"n_layers": 3, "layer0.type": "conv", "layer0.filters": 16, "layer0.kernel": 3, "layer0.skip": True,
                "layer1.type": "maxpool", "layer2.type": "conv", "layer2.filters": 16, "layer2.kernel": 3,
                "layer2.skip": False, "dense.units": 64}
    else:
        space = make_space(name, **SMALL[name])
        arch = random_arch(space, seed=0)
    shape = shape_of(name)
    model, folder = _export(space, arch, shape, tmp_path / name)
    written = json.loads((folder / "arch.json").read_text())
    assert written["kind"] == "dense" and written["target_shape"] == list(shape[1:])
    loaded = load_model(folder)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        ref, again = model(x), loaded(x)
    assert again.shape == (4, 3, *shape[1:])
    torch.testing.assert_close(again, ref, atol=0, rtol=0)


def test_an_export_without_a_kind_loads_as_classification(tmp_path) -> None:
    space, arch = NanoSpace(C=4, positions=2), {"pos0.op": "conv3x3", "pos1.op": "skip"}
    model, folder = _export(space, arch, (1, 8, 8), tmp_path / "old", kind="classify")
    path = folder / "arch.json"
    written = json.loads(path.read_text())
    assert written["kind"] == "classify" and written["target_shape"] == [8, 8]
    path.write_text(json.dumps({k: v for k, v in written.items() if k not in ("kind", "target_shape")}))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_model(folder)(x), model(x), atol=0, rtol=0)


def test_a_study_records_the_kind_and_rebuilds_it() -> None:
    space = NanoSpace(C=4, positions=2)
    spec = SimpleNamespace(space=space, dataset="tensors", data_dir="d.npz", image_size=None, val_fraction=0.2,
                           seed=0, artifacts=None)
    record = study_record(spec, SimpleNamespace(input_shape=(1, 16, 16), num_classes=3, kind="dense",
                                                target_shape=(16, 16)))
    assert record["kind"] == "dense" and record["target_shape"] == [16, 16]
    for stored, kind, target in ((record, "dense", (16, 16)),
                                 ({k: v for k, v in record.items() if k not in ("kind", "target_shape")},
                                  "classify", ())):
        study = optuna.create_study()
        study.set_user_attr("nasopt", {"space": "NanoSpace", **json.loads(json.dumps(stored))})
        rebuilt = from_study(study)
        assert (rebuilt.task.kind, rebuilt.task.target_shape) == (kind, target)
        out = space.build({"pos0.op": "conv3x3", "pos1.op": "maxpool3x3"}, rebuilt.task)(torch.randn(2, 1, 16, 16))
        assert out.shape == ((2, 3, 16, 16) if kind == "dense" else (2, 3))


def test_a_dense_network_is_drawn_with_its_head() -> None:
    arch = {"n_layers": 2, "layer0.type": "conv", "layer0.filters": 16, "layer0.kernel": 3, "layer0.skip": False,
            "layer1.type": "maxpool", "dense.units": 64}
    g = arch_graph(arch, LayersSpace(), input_shape=(1, 16, 16), num_classes=3, kind="dense")
    assert g.nodes["head"]["shape"] == (3, 16, 16) and g.nodes["head"]["label"] == "1x1 conv + upsample"
    assert g.nodes["dense"]["label"] == "1x1 conv 64"
    assert arch_graph(arch, LayersSpace(), input_shape=(1, 16, 16), num_classes=3).nodes["head"]["shape"] == (3,)


def test_a_latency_table_knows_the_head_it_was_built_for() -> None:
    space = NanoSpace(C=4, positions=1, ops=("conv3x3", "skip"))
    dense = ShapeTask("t", (1, 8, 8), 3, kind="dense")
    table = build_table(space, dense, warmup=0, repeats=1)
    assert table.provenance["kind"] == "dense"
    table.check(space, dense)
    with pytest.raises(UserError, match="built for a dense task, but the task is classify"):
        table.check(space, ShapeTask("t", (1, 8, 8), 3))
    del table.data["provenance"]["kind"]  # a table written before kinds: classification
    table.check(space, ShapeTask("t", (1, 8, 8), 3, kind="regress"))
    with pytest.raises(UserError, match="built for a classify task, but the task is dense"):
        table.check(space, dense)
