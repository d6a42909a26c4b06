"""Quantization-aware training (`TrainConfig(qat_epochs=k)`, `nasopt.quant.FakeQuant`).

The fake quantizer rounds weights per output channel to the symmetric int8 grid (which is also the grid of the
BatchNorm-folded weight) and activations per tensor to 256 levels, with the straight-through gradient; the
training loop applies it for the last k epochs only, validates in fp32 and hands back a plain fp32 model.
The simulation is closer to onnxruntime's int8 model than the float network is. Through the CLI: a study with
QAT runs (sampled and DARTS), bad values and QAT that cannot apply are one line with exit 2 and nothing written,
and a study stored before the field existed resumes (and refuses QAT switched on).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from test_cli import NANO, assert_user_error, nasopt, snapshot
from torch import nn
from torch.nn.utils import parametrize

import nasopt as api
from nasopt.errors import UserError
from nasopt.quant import FakeQuant, fake_quantize_activation, fake_quantize_weight
from nasopt.scoring import evaluate
from nasopt.search_spaces.nano import NanoSpace
from nasopt.train import TrainConfig, train


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


# ------------------------------------------------------------------------------------------------ the grid

def test_weights_round_per_channel_to_the_symmetric_int8_grid_and_commute_with_bn_folding():
    w = torch.randn(6, 3, 3, 3) * torch.tensor([1e-3, 0.1, 1, 10, 100, 0.5]).view(-1, 1, 1, 1)
    q = fake_quantize_weight(w)
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    levels = q / scale
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3
    assert (q - w).abs().le(scale / 2 + 1e-6).all()  # nearest level, per channel: no channel is crushed
    # the BatchNorm folded into the conv scales each output channel by s (any sign): rounding the folded weight
    # is rounding the conv's own weight, scaled
    s = torch.tensor([2.0, -0.3, 1e-3, 5.0, -7.0, 0.9]).view(-1, 1, 1, 1)
    assert torch.allclose(fake_quantize_weight(w * s), q * s, rtol=1e-5, atol=1e-7)
    # a per-tensor scale would not commute: the reason this holds is the per-channel grid
    flat = torch.fake_quantize_per_tensor_affine(w * s, float((w * s).abs().max()) / 127, 0, -127, 127)
    assert not torch.allclose(flat, q * s, rtol=1e-3)


def test_activations_round_to_256_levels_with_zero_exact_and_a_straight_through_gradient():
    x = torch.linspace(-1.3, 3.1, 1000, requires_grad=True)
    y = fake_quantize_activation(x, torch.tensor(-1.0), torch.tensor(3.0))  # clips to [-1, 3]
    step = 4.0 / 255  # zero is a level: the range's ends move by less than a step
    assert len(torch.unique(y.detach())) <= 256 and -1.0 - step <= float(y.detach().min()) < -1.0 + step
    assert float(fake_quantize_activation(torch.zeros(3), torch.tensor(-1.0), torch.tensor(3.0)).abs().max()) == 0
    y.sum().backward()
    level = torch.round(x.detach() / step) + round(1.0 / step)  # zero point 64: levels 0..255 span ~[-1, 3]
    inside = (level >= 0) & (level <= 255)
    assert 0 < int(inside.sum()) < len(x)
    assert x.grad is not None and torch.equal(x.grad, inside.float())  # 1 inside the range, 0 where it clips


def test_attached_fake_quant_rounds_every_layer_and_remove_restores_the_fp32_model():
    model = cnn()
    for bn in (model[1], model[4]):
        bn.momentum = 0.0  # the training-mode pass below leaves the running statistics as they are
    x = torch.randn(4, 1, 8, 8)
    params, keys = list(model.parameters()), list(model.state_dict())
    with torch.no_grad():
        ref = model.eval()(x)
    fq = FakeQuant(model).attach()
    model.train()
    inputs: list[torch.Tensor] = []  # what the second conv reads: rounded by its observer
    model[3].register_forward_hook(lambda m, a, out: inputs.append(a[0]))
    model(x)
    assert len(torch.unique(inputs[0])) <= 256
    for conv in (model[0], model[3], model[8]):
        assert parametrize.is_parametrized(conv, "weight")
        assert torch.equal(conv.weight, fake_quantize_weight(conv.parametrizations.weight.original))
    with fq.paused(), torch.no_grad():
        assert torch.equal(model.eval()(x), ref)  # paused: the float network
    with torch.no_grad():
        assert not torch.equal(model.eval()(x), ref)
    fq.remove()
    fq.remove()  # twice is harmless
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert list(model.state_dict()) == keys and all(a is b for a, b in zip(params, model.parameters(), strict=True))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref)


# ------------------------------------------------------------------------------------------------ training

class Spy(nn.Module):
    """A CNN that records, per forward pass, whether its conv ran fake-quantized and in which mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = cnn()
        self.seen: list[tuple[bool, bool]] = []  # (training, weights on the int8 grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.net[0]
        quantized = parametrize.is_parametrized(conv, "weight") and not torch.equal(
            conv.weight, conv.parametrizations.weight.original)
        self.seen.append((self.training, quantized))
        return self.net(x)


def test_the_last_qat_epochs_train_fake_quantized_validate_in_fp32_and_return_fp32(digits_task, one_thread):
    model = Spy()
    keys = list(model.state_dict())
    marks: list[int] = []
    result = train(model, digits_task, TrainConfig(epochs=3, qat_epochs=1, batch_size=128),
                   on_epoch=lambda epoch, record: marks.append(len(model.seen)))
    epochs = [model.seen[a:b] for a, b in zip([0, *marks[:-1]], marks, strict=True)]
    for e, seen in enumerate(epochs, start=1):
        training = [q for t, q in seen if t]
        assert training and all(q == (e == 3) for q in training), (e, training[:3])
        assert not any(q for t, q in seen if not t)  # validation: the fp32 network
    assert list(model.state_dict()) == keys and not parametrize.is_parametrized(model.net[0])
    # the recorded accuracy is the fp32 model's, the one kept
    assert result.curve[-1]["val_acc"] == pytest.approx(evaluate(model, digits_task.val, task=digits_task)["acc"])


def test_qat_epochs_equal_to_epochs_trains_from_the_start(digits_task, one_thread):
    model = Spy()
    train(model, digits_task, TrainConfig(epochs=1, qat_epochs=1, batch_size=256))
    assert all(q for t, q in model.seen if t)


@pytest.mark.parametrize("bad, words", [
    ({"qat_epochs": -1}, ["`0 <= qat_epochs <= epochs`", "qat_epochs=-1"]),
    ({"epochs": 3, "qat_epochs": 4}, ["`0 <= qat_epochs <= epochs`", "qat_epochs=4, epochs=3"]),
    ({"qat_epochs": True}, ["`qat_epochs` must be an int", "qat_epochs=True"]),
])
def test_bad_qat_epochs_is_a_user_error(bad, words):
    with pytest.raises(UserError) as e:
        TrainConfig(**bad)
    for word in words:
        assert word in str(e.value)


def test_fake_quant_is_closer_to_onnxruntimes_int8_model_than_fp32(digits_task, one_thread):
    """The simulation (ranges calibrated like the deployment quantizer's) against onnxruntime's int8 graph (run as
    written: the int8 arithmetic, not a CPU's fused kernels, which saturate on x86 without VNNI). Both
    put the logits on the same 256-level output grid (next test), so fp32 is compared on that grid too: what is
    measured is the rounding inside the network (a logit one level off costs a whole level in either)."""
    pytest.importorskip("onnxruntime")
    from nasopt.measure import _int8 as int8
    from nasopt.measure._onnx import ort_session, run_onnx, write_onnx

    x = torch.cat([b for b, _ in digits_task.val.batches(512)])
    generator = torch.Generator().manual_seed(0)  # the calibration samples of Calibration(seed=0, batch_size=64)
    batches = digits_task.train.batches(64, shuffle=True, generator=generator)
    calibration = [b for _, (b, _) in zip(range(4), batches, strict=False)]
    for seed in range(2):
        model = cnn(seed)
        train(model, digits_task, TrainConfig(epochs=3, batch_size=64), seed=seed)
        model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            write_onnx(model, x[:2], Path(tmp) / "fp32.onnx")
            int8.quantize_onnx(Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", digits_task,
                               int8.Calibration(samples=256))
            deployed = run_onnx(ort_session(Path(tmp) / "int8.onnx", fused=False), x)  # (the exact int8 arithmetic)
        with torch.no_grad(), FakeQuant(model).attach().calibrate(calibration) as fq:
            simulated = model(x)
            with fq.paused():  # the fp32 network's logits, on the output grid of the int8 model
                assert fq.output is not None and fq.output.lo is not None and fq.output.hi is not None
                fp32 = fake_quantize_activation(model(x), fq.output.lo, fq.output.hi)
        error = {name: float((out - deployed).norm() / deployed.norm()) for name, out in
                 (("fp32", fp32), ("simulated", simulated))}
        assert error["simulated"] < 0.95 * error["fp32"], error


def test_the_output_is_rounded_on_onnxruntimes_output_grid(digits_task, one_thread):
    """onnxruntime quantizes the graph's output too (a QuantizeLinear/DequantizeLinear pair on the logits), which
    is where a dense head loses its mIoU (tied logits): the fake-quantized network rounds its output on that grid."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from nasopt.measure import _int8 as int8
    from nasopt.measure._onnx import ort_session, run_onnx, write_onnx

    model = cnn(1)
    train(model, digits_task, TrainConfig(epochs=1, batch_size=64), seed=1)
    model.eval()
    x = torch.cat([b for b, _ in digits_task.val.batches(512)])
    generator = torch.Generator().manual_seed(0)  # the calibration samples of Calibration(seed=0, batch_size=64)
    batches = digits_task.train.batches(64, shuffle=True, generator=generator)
    calibration = [b for _, (b, _) in zip(range(4), batches, strict=False)]
    with tempfile.TemporaryDirectory() as tmp:
        write_onnx(model, x[:2], Path(tmp) / "fp32.onnx")
        int8.quantize_onnx(Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", digits_task, int8.Calibration(samples=256))
        graph = onnx.load(str(Path(tmp) / "int8.onnx")).graph
        deployed = run_onnx(ort_session(Path(tmp) / "int8.onnx", fused=False), x)  # (the exact int8 arithmetic)
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    last = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] == graph.output[0].name)
    scale, zero = float(init[last.input[1]]), int(init[last.input[2]])
    fq = FakeQuant(model).attach().calibrate(calibration)
    with torch.no_grad():
        simulated = model(x)
    levels = simulated / scale + zero
    assert torch.allclose(levels, levels.round(), atol=1e-3) and 0 <= int(levels.round().min()) <= int(levels.round().max()) <= 255
    assert (simulated - deployed).abs().max() < (deployed.abs().max() * 0.1)  # the same logits, give or take levels
    fq.remove()
    assert not model._forward_hooks
    with torch.no_grad():
        plain = model(x)
    levels = plain / scale + zero
    assert not torch.allclose(levels, levels.round(), atol=1e-3)  # the fp32 network's logits are off the grid


# ------------------------------------------------------------------------------------------------ the CLI

QAT_NANO = NANO.read_text().replace("train=nasopt.TrainConfig(epochs=3,", "train=nasopt.TrainConfig(epochs=3, qat_epochs=1,")
QAT_DARTS = '''
import nasopt
from nasopt.oneshot import DARTS
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(name="qat_darts", space=NanoSpace(C=8, positions=2), dataset="digits",
                         objectives={"accuracy": "maximize"}, strategy=DARTS(epochs=1, batch_size=32),
                         train=nasopt.TrainConfig(epochs=2, qat_epochs=1, batch_size=64))
'''
TRAIN_FN = '''
import nasopt
from nasopt.search_spaces.nano import NanoSpace

def my_training(model, task, config, reporter):
    return {"accuracy": 0.5}

study = nasopt.StudySpec(name="own_loop", space=NanoSpace(C=8), dataset="digits", objectives={"accuracy": "maximize"},
                         train=nasopt.TrainConfig(epochs=2, qat_epochs=1), train_fn=my_training, n_trials=1)
'''
NANOBENCH = '''
import nasopt
from nasopt.search_spaces.nano import NanoSpace

study = nasopt.StudySpec(name="bench", space=NanoSpace(), dataset="nanobench", objectives={"accuracy": "maximize"},
                         train=nasopt.TrainConfig(epochs=2, qat_epochs=1), n_trials=1)
'''


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("qat")
    (cwd / "qat_nano.py").write_text(QAT_NANO)
    result = nasopt("run", "qat_nano.py", "-q", "--n-trials", 2, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd


def test_a_study_with_qat_runs_from_the_cli_and_records_it(qat_run):
    study = optuna.load_study(study_name="tiny_nano", storage=f"sqlite:///{qat_run / 'nasopt.db'}")
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 2 and any(t.state == TrialState.COMPLETE for t in done)
    assert study.user_attrs["nasopt"]["definition"]["train.qat_epochs"] == 1
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    assert all(len(t.user_attrs["curve"]) == 3 and 0 < t.values[0] <= 1 for t in complete)


def test_turning_qat_off_on_a_qat_study_is_a_changed_setting(qat_run, tmp_path):
    (tmp_path / "qat_nano.py").write_text(QAT_NANO)
    (tmp_path / "nasopt.db").write_bytes((qat_run / "nasopt.db").read_bytes())
    before = snapshot(tmp_path)
    assert_user_error(nasopt("run", "qat_nano.py", "-q", "--n-trials", 3, "--set", "train.qat_epochs=0", cwd=tmp_path),
                      "train.qat_epochs: stored 1, now 0", "--allow-changed train.qat_epochs")
    assert snapshot(tmp_path) == before


def test_a_study_stored_before_qat_existed_resumes_and_refuses_qat(tmp_path):
    """Older definitions have no train.qat_epochs: they ran without QAT, so the default compares equal and
    QAT switched on is a change like any other training setting."""
    assert nasopt("run", NANO, "-q", "--n-trials", 1, cwd=tmp_path).returncode == 0
    study = optuna.load_study(study_name="tiny_nano", storage=f"sqlite:///{tmp_path / 'nasopt.db'}")
    info = dict(study.user_attrs["nasopt"])
    info["definition"] = {k: v for k, v in info["definition"].items() if k != "train.qat_epochs"}
    info["train"] = {k: v for k, v in info["train"].items() if k != "qat_epochs"}
    study.set_user_attr("nasopt", info)
    before = snapshot(tmp_path)
    assert_user_error(nasopt("run", NANO, "-q", "--n-trials", 2, "--set", "train.qat_epochs=1", cwd=tmp_path),
                      "train.qat_epochs: stored 0, now 1")
    assert snapshot(tmp_path) == before
    result = nasopt("run", NANO, "-q", "--n-trials", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(optuna.load_study(study_name="tiny_nano", storage=f"sqlite:///{tmp_path / 'nasopt.db'}").trials) == 2


def test_qat_applies_to_the_evaluation_training_of_a_gradient_trial(tmp_path):
    """DARTS searches its supernet without QAT; the derived network is then trained by the study's TrainConfig,
    whose last epoch is fake-quantized: the combination runs."""
    (tmp_path / "qat_darts.py").write_text(QAT_DARTS)
    result = nasopt("run", "qat_darts.py", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trial = optuna.load_study(study_name="qat_darts", storage=f"sqlite:///{tmp_path / 'nasopt.db'}").trials[0]
    assert trial.state == TrialState.COMPLETE and len(trial.user_attrs["curve"]) == 2


@pytest.mark.parametrize("case", ["too_many", "negative", "train_fn", "nanobench"])
def test_bad_qat_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    files = {"too_many": ("tiny.py", NANO.read_text(), ["--set", "train.qat_epochs=4"]),
             "negative": ("tiny.py", NANO.read_text(), ["--set", "train.qat_epochs=-1"]),
             "train_fn": ("own.py", TRAIN_FN, []),
             "nanobench": ("bench.py", NANOBENCH, [])}
    name, text, extra = files[case]
    (tmp_path / name).write_text(text)
    before = snapshot(tmp_path)
    words = {"too_many": ["`0 <= qat_epochs <= epochs`", "qat_epochs=4, epochs=3"],
             "negative": ["`0 <= qat_epochs <= epochs`", "qat_epochs=-1"],
             "train_fn": ["train.qat_epochs=1", "train_fn", "qat_epochs=0", "nasopt.quant.FakeQuant"],
             "nanobench": ["train.qat_epochs=1", "nanobench", "qat_epochs=0"]}[case]
    assert_user_error(nasopt("run", name, "-q", *extra, cwd=tmp_path), *words)
    assert snapshot(tmp_path) == before


def test_the_library_refuses_the_same():
    with pytest.raises(UserError, match="train_fn"):
        api.StudySpec(name="x", space=NanoSpace(), dataset="digits",
                         objectives={"accuracy": "maximize"}, train=TrainConfig(epochs=2, qat_epochs=2),
                         train_fn=lambda model, task, config, reporter: {"accuracy": 1.0})
