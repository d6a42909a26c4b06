"""Weight inheritance: only tensors behind the same decisions and with the same shapes are copied."""

from __future__ import annotations

import optuna
import torch

import nasopt
from nasopt.artifacts._inherit import Recorder, artifact_store_for, inherit, matching_prefix, save_weights
from nasopt.data import load_task
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.search_spaces.nano import NanoSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _arch(*ops: str) -> dict[str, str]:
    return {f"pos{i}.op": op for i, op in enumerate(ops)}


def _parent_study(tmp_path, space, task, arch):
    """A study with one COMPLETE trial whose (randomised) weights are stored as an artifact."""
    store = artifact_store_for(None, str(tmp_path / "artifacts"))
    study = optuna.create_study(directions=["maximize"])
    trial = study.ask()
    recorder = Recorder()
    torch.manual_seed(1)
    parent = space.build(arch, task, recorder)
    with torch.no_grad():
        for p in parent.parameters():
            p.add_(torch.randn_like(p))  # make the parent's weights recognisable
    trial.set_user_attr("decisions", recorder.sequence)
    save_weights(trial, parent, store)
    study.tell(trial, 0.9)
    return study, store, parent.state_dict()


def test_matching_prefix_stops_at_the_first_mismatch():
    a = {"x": torch.zeros(2), "y": torch.zeros(3), "z": torch.zeros(4)}
    assert matching_prefix(a, {"x": torch.ones(2), "y": torch.ones(3), "z": torch.ones(4)}) == ["x", "y", "z"]
    assert matching_prefix(a, {"x": torch.ones(2), "y": torch.ones(5), "z": torch.ones(4)}) == ["x"]
    assert matching_prefix(a, {"y": torch.ones(3)}) == []


def test_nano_child_inherits_the_layers_before_its_first_different_decision(tmp_path):
    space, task = NanoSpace(C=8), load_task("synthetic")
    parent_arch = _arch("conv3x3", "conv5x5", "conv3x3", "conv3x3")
    study, store, parent_sd = _parent_study(tmp_path, space, task, parent_arch)
    recorder = Recorder()
    torch.manual_seed(2)
    child = space.build(_arch("conv3x3", "conv5x5", "conv5x5", "conv3x3"), task, recorder)
    fresh = {k: v.clone() for k, v in child.state_dict().items()}
    info = inherit(child, recorder, study, store)
    assert info is not None and info["parent"] == 0
    names = info["tensors"]
    assert any(n.startswith("stem.") for n in names) and any(n.startswith("positions.1.") for n in names)
    assert not any(n.startswith(("positions.2.", "positions.3.", "classifier.")) for n in names)
    for key, value in child.state_dict().items():
        expected = parent_sd[key] if key in names else fresh[key]
        assert torch.equal(value, expected), key


def test_a_different_parameter_free_decision_blocks_what_follows(tmp_path):
    """pos0 skip vs maxpool has no tensors, yet the conv at pos1 sits behind a different decision."""
    space, task = NanoSpace(C=8), load_task("synthetic")
    study, store, _ = _parent_study(tmp_path, space, task, _arch("skip", "conv3x3", "zero", "zero"))
    recorder = Recorder()
    child = space.build(_arch("maxpool3x3", "conv3x3", "zero", "zero"), task, recorder)
    info = inherit(child, recorder, study, store)
    assert info is not None
    assert info["tensors"] and all(n.startswith("stem.") for n in info["tensors"])


def test_mobile_depth_change_keeps_only_the_stages_before_it(tmp_path):
    space, task = MobileSpace(stages=2, max_depth=2), load_task("synthetic")
    base = {"width": 1.0, "stage1.depth": 2, "stage1.block0.kernel": 3, "stage1.block0.expand": 3,
            "stage1.block1.kernel": 5, "stage1.block1.expand": 1, "stage2.depth": 1,
            "stage2.block0.kernel": 3, "stage2.block0.expand": 6}
    study, store, _ = _parent_study(tmp_path, space, task, base)
    child_arch = dict(base, **{"stage2.depth": 2, "stage2.block1.kernel": 7, "stage2.block1.expand": 3})
    recorder = Recorder()
    child = space.build(child_arch, task, recorder)
    info = inherit(child, recorder, study, store)
    names = info["tensors"]
    assert any(n.startswith("blocks.2.") for n in names)  # stage2.block0: same decisions before it
    assert not any(n.startswith(("blocks.3.", "classifier.")) for n in names)


def test_study_with_inheritance_records_parent_and_tensors(tmp_path):
    storage = f"sqlite:///{tmp_path / 'inh.db'}"
    spec = nasopt.StudySpec(name="inh", space=NanoSpace(C=8), dataset="synthetic", n_trials=2, inherit_weights=True,
                            train=nasopt.TrainConfig(epochs=1, batch_size=128),
                            measure=nasopt.MeasureConfig(warmup=0, repeats=3))
    study = optuna.create_study(study_name="inh", storage=storage, directions=["maximize"])
    study.enqueue_trial(_arch("conv3x3", "conv3x3", "skip", "zero"))
    study.enqueue_trial(_arch("conv3x3", "conv3x3", "conv5x5", "zero"))
    nasopt.run(spec, storage=storage, progress=False)
    first, second = sorted(optuna.load_study(study_name="inh", storage=storage).trials, key=lambda t: t.number)
    assert "weights_artifact" in first.user_attrs and "inherited" not in first.user_attrs
    inherited = second.user_attrs["inherited"]
    assert inherited["parent"] == 0 and 0 < inherited["tensors"] < inherited["of"]
    assert (tmp_path / "inh.artifacts").is_dir()
