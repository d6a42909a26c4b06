"""The train/eval loop: real training on the in-memory digits and synthetic tasks, on the CPU."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

from nasopt import TrainConfig, UserError
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.search_spaces.nano import NanoSpace
from nasopt.train import divergence_reason, evaluate, train

NANO_ARCH = {"pos0.op": "conv3x3", "pos1.op": "maxpool3x3", "pos2.op": "skip", "pos3.op": "conv3x3"}
MOBILE_ARCH = {"width": 0.5, "stage1.depth": 1, "stage1.block0.kernel": 3, "stage1.block0.expand": 3,
               "stage2.depth": 1, "stage2.block0.kernel": 3, "stage2.block0.expand": 3}
pytestmark = pytest.mark.usefixtures("one_thread")
CPU_CAPS = getattr(torch.cpu, "get_capabilities", dict)()
CPU_AMX_BF16 = bool(CPU_CAPS.get("amx_bf16", False))  # what precision="auto" asks of a CPU
needs_bf16 = pytest.mark.skipif(
    not any(CPU_CAPS.get(flag, False) for flag in ("amx_bf16", "avx512_bf16", "bf16")),
    reason="this CPU has no bf16 instructions (AMX-BF16, AVX512-BF16 or ARM BF16): bf16 would be emulated, slowly")

RECORD_KEYS = {"epoch", "train_loss", "train_acc", "val_acc", "val_loss", "lr", "seconds"}


def nano(task, C: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return NanoSpace(C=C).build(NANO_ARCH, task)


def without_time(curve: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in curve]


# ------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize(("kwargs", "rule"), [
    ({"epochs": 0}, "`epochs >= 1`"),
    ({"batch_size": 0}, "`batch_size >= 1`"),
    ({"lr": 0.0}, "`lr > 0`"),
    ({"lr": -0.1}, "`lr > 0`"),
    ({"weight_decay": -1e-4}, "`weight_decay >= 0`"),
    ({"label_smoothing": 1.0}, "`0 <= label_smoothing < 1`"),
    ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"precision": "float16"}, "unknown precision 'float16'"),
    ({"divergence": 1.0}, "`divergence > 1`"),
    ({"divergence": -5.0}, "`divergence > 1`"),
])
def test_train_config_rejects_bad_values(kwargs, rule):
    with pytest.raises(UserError) as info:
        TrainConfig(**kwargs)
    message = str(info.value)
    assert rule in message
    if kwargs.get("optimizer"):
        assert "sgd" in message and "adam" in message  # the fix: the known choices
    elif kwargs.get("precision"):
        assert all(p in message for p in ("auto", "fp32", "bf16", "fp16"))
    else:
        assert str(next(iter(kwargs.values()))) in message  # the value that broke the rule


def test_train_config_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        TrainConfig(3)  # type: ignore[misc]
    config = TrainConfig(epochs=3)
    with pytest.raises(AttributeError):
        config.epochs = 4  # type: ignore[misc]


# ----------------------------------------------------------------------------------------- training

@pytest.mark.parametrize("space", ["nano", "mobile"])
def test_train_on_digits_learns_and_records_every_epoch(digits_task, space):
    torch.manual_seed(0)
    if space == "nano":
        model = NanoSpace(C=8).build(NANO_ARCH, digits_task)
        config = TrainConfig(epochs=3, batch_size=64, channels_last=False)
    else:  # the mobile path also runs the channels_last default
        model = MobileSpace(stages=2, max_depth=1).build(MOBILE_ARCH, digits_task)
        config = TrainConfig(epochs=3, batch_size=64)
    seen: list[tuple[int, dict[str, float]]] = []
    result = train(model, digits_task, config, seed=0, on_epoch=lambda e, r: seen.append((e, dict(r))))

    assert [r["epoch"] for r in result.curve] == [1, 2, 3]
    assert [e for e, _ in seen] == [1, 2, 3]
    assert [r for _, r in seen] == result.curve  # on_epoch gets the records of the curve
    for r in result.curve:
        assert RECORD_KEYS | {"val_top5"} <= set(r)  # 10 classes: top-5 is reported
        assert 0 <= r["val_acc"] <= r["val_top5"] <= 1
        assert math.isfinite(r["train_loss"]) and r["train_loss"] > 0
    assert result.val_acc == result.curve[-1]["val_acc"] > 0.5  # chance is 0.1
    assert result.best_val_acc == max(r["val_acc"] for r in result.curve)
    assert result.curve[-1]["train_loss"] < result.curve[0]["train_loss"]
    lrs = [r["lr"] for r in result.curve]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] <= config.lr and lrs[-1] < 0.01 * config.lr  # cosine
    assert result.seconds > 0
    assert model.training  # left in train mode, as it was trained


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_same_seed_gives_identical_curves(synthetic_task, precision):
    config = TrainConfig(epochs=2, batch_size=64, channels_last=False, precision=precision)
    runs = []
    for seed in (0, 0, 1):
        model = nano(synthetic_task)  # same initial weights every time
        curve = train(model, synthetic_task, config, seed=seed).curve
        runs.append((without_time(curve), model.state_dict()))
    (curve_a, weights_a), (curve_b, weights_b), (curve_c, _) = runs
    assert curve_a == curve_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert curve_c != curve_a  # the seed does pick the batch order


# ------------------------------------------------------------------------------------------ precision

def test_fp16_on_the_cpu_is_refused_with_the_fix(digits_task):
    model = nano(digits_task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as info:
        train(model, digits_task, TrainConfig(epochs=1, precision="fp16"))
    message = str(info.value)
    assert "precision='fp16'" in message and "CUDA" in message and "'cpu'" in message
    assert "precision='bf16'" in message  # the fix
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any step


@needs_bf16
def test_bf16_training_learns_and_keeps_fp32_weights_and_grads(digits_task):
    model = nano(digits_task)
    result = train(model, digits_task, TrainConfig(epochs=3, batch_size=64, precision="bf16"), seed=0)
    assert result.precision == "bf16" and not result.channels_last
    assert result.val_acc > 0.5  # chance is 0.1
    assert result.curve[-1]["train_loss"] < result.curve[0]["train_loss"]
    assert all(math.isfinite(r["train_loss"]) for r in result.curve)
    # autocast only: parameters, their gradients and the BN running stats stay fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in model.buffers())


class DtypeProbe(nn.Module):
    """Records (training?, dtype of the logits) for every forward pass of the wrapped model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        self.calls.append((self.training, logits.dtype))
        return logits


@needs_bf16
def test_bf16_trains_in_bf16_but_validates_in_fp32(digits_task):
    probe = DtypeProbe(nano(digits_task))
    train(probe, digits_task, TrainConfig(epochs=1, batch_size=256, precision="bf16"))
    assert {dtype for training, dtype in probe.calls if training} == {torch.bfloat16}
    assert {dtype for training, dtype in probe.calls if not training} == {torch.float32}  # evaluate
    # evaluate is fp32 even inside a caller's autocast region: the same numbers as outside it
    probe.calls.clear()
    plain = evaluate(probe, digits_task.val)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = evaluate(probe, digits_task.val)
    assert inside == plain
    assert {dtype for _, dtype in probe.calls} == {torch.float32}


def test_fp32_training_ignores_an_enclosing_autocast(digits_task):
    probe = DtypeProbe(nano(digits_task))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = train(probe, digits_task, TrainConfig(epochs=1, batch_size=256, precision="fp32"))
    assert result.precision == "fp32"
    assert {dtype for _, dtype in probe.calls} == {torch.float32}


def test_auto_precision_follows_the_rule(digits_task):
    """bf16 only on a device that runs it natively (AMX-BF16 here) and for a model without grouped convs."""
    config = TrainConfig(epochs=1, batch_size=256)  # precision="auto", channels_last=None
    torch.manual_seed(0)
    mobile = MobileSpace(stages=2, max_depth=1).build(MOBILE_ARCH, digits_task)  # depthwise convs
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in mobile.modules())
    mobile_result = train(mobile, digits_task, config)
    assert (mobile_result.precision, mobile_result.channels_last) == ("fp32", True)
    dense_results = [train(nano(digits_task), digits_task, config) for _ in range(2)]  # dense 3x3 convs only
    expected = "bf16" if CPU_AMX_BF16 else "fp32"
    assert [(r.precision, r.channels_last) for r in dense_results] == [(expected, False)] * 2  # never by timing
    assert without_time(dense_results[0].curve) == without_time(dense_results[1].curve)


@pytest.mark.parametrize(("optimizer", "lr"), [("adam", 0.01), ("adamw", 0.01), ("sgd", 0.05)])
def test_each_optimizer_reduces_the_loss(synthetic_task, optimizer, lr):
    config = TrainConfig(epochs=2, batch_size=64, lr=lr, optimizer=optimizer, channels_last=False)
    curve = train(nano(synthetic_task), synthetic_task, config).curve
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]


def test_on_epoch_pruning_stops_training(synthetic_task):
    calls: list[int] = []

    def prune_at_two(epoch, record):
        calls.append(epoch)
        if epoch == 2:
            raise optuna.TrialPruned("pruned at epoch 2")

    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        train(nano(synthetic_task), synthetic_task, TrainConfig(epochs=10, batch_size=128, channels_last=False),
              on_epoch=prune_at_two)
    assert calls == [1, 2]


class NaNOut(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * float("nan")


def test_nan_output_prunes_with_a_reason(synthetic_task):
    calls: list[int] = []
    with pytest.raises(optuna.TrialPruned, match="non-finite"):
        train(NaNOut(nano(synthetic_task)), synthetic_task, TrainConfig(epochs=3, channels_last=False),
              on_epoch=lambda e, r: calls.append(e))
    assert calls == []  # stopped in the first epoch, before any record


def test_diverging_learning_rate_prunes_with_a_reason(synthetic_task):
    config = TrainConfig(epochs=4, batch_size=64, lr=1e6, grad_clip=None, channels_last=False)
    with pytest.raises(optuna.TrialPruned, match="non-finite|diverged: training loss"):
        train(nano(synthetic_task), synthetic_task, config)


CHANCE = math.log(10)


@pytest.mark.parametrize(("epoch", "train_loss", "val_loss", "first", "divergence", "reason"), [
    (1, 2.30, 2.25, 2.30, 100.0, None),                       # a fresh network: about log(10)
    (3, 0.05, 0.20, 1.90, 100.0, None),                       # learning
    (2, 2.00, 2.50, 0.01, 100.0, None),                       # 200x epoch 1, but still better than guessing
    (2, 3.00, 2.50, 0.01, 100.0, "> 100 x epoch 1's 0.01"),   # ... and now worse: it blew up
    (5, 150.0, 80.0, 2.0, 100.0, None),                       # bad, not yet 100x anything
    (1, 7e18, float("nan"), 7e18, 100.0, "non-finite validation loss"),
    (1, 7e18, 1e20, 7e18, 100.0, f"> 100 x log(10) = {100 * CHANCE:.4g}"),
    (1, 231.0, 5.0, 231.0, 100.0, "> 100 x log(10)"),         # just past the bound
    (1, 229.0, 5.0, 229.0, 100.0, None),                      # just within
    (4, 60.0, 9.0, 0.5, 100.0, "> 100 x epoch 1's 0.5"),      # ran away from where it started
    (2, 25.0, 9.0, 2.0, 10.0, "> 10 x log(10)"),              # a stricter setting
    (1, 7e18, 1e20, 7e18, None, None),                        # off: a finite loss is left alone ...
    (1, 7e18, float("inf"), 7e18, None, "non-finite validation loss"),  # ... a non-finite one is not
    (2, float("nan"), 2.0, 2.3, None, "non-finite training loss in epoch 2"),
])
def test_the_divergence_rule(epoch, train_loss, val_loss, first, divergence, reason):
    found = divergence_reason(epoch, train_loss, val_loss, first, 10, divergence)
    if reason is None:
        assert found is None, found
    else:
        assert found is not None and reason in found, found


class Loud(nn.Module):
    """Logits `scale` times larger than the inner network's (in training only, with `train_only`): a finite
    training loss far above guessing, as after a learning rate that blew the weights up."""

    def __init__(self, inner: nn.Module, scale: float, *, train_only: bool = False, eval_nan: bool = False) -> None:
        super().__init__()
        self.inner, self.scale, self.train_only, self.eval_nan = inner, scale, train_only, eval_nan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if not self.training and self.eval_nan:
            return out * float("nan")
        return out * self.scale if self.training or not self.train_only else out


def test_a_finite_runaway_training_loss_prunes_before_the_epoch_is_reported(digits_task):
    calls: list[int] = []
    config = TrainConfig(epochs=3, lr=1e-9, channels_last=False)  # the weights barely move
    with pytest.raises(optuna.TrialPruned, match=r"diverged: training loss .* in epoch 1 > 100 x log\(10\)"):
        train(Loud(nano(digits_task), 1e4, train_only=True), digits_task, config,
              on_epoch=lambda e, r: calls.append(e))
    assert calls == []  # a pruner never sees the chance-level accuracy of a diverged epoch
    # divergence=None: only non-finite losses prune
    result = train(Loud(nano(digits_task), 1e4, train_only=True), digits_task,
                   TrainConfig(epochs=1, lr=1e-9, channels_last=False, divergence=None))
    assert result.curve[0]["train_loss"] > 100 * CHANCE


def test_a_non_finite_validation_loss_prunes_even_with_divergence_off(digits_task):
    for divergence in (100.0, None):
        with pytest.raises(optuna.TrialPruned, match="non-finite validation loss"):
            train(Loud(nano(digits_task), 1.0, eval_nan=True), digits_task,
                  TrainConfig(epochs=2, channels_last=False, divergence=divergence))


def test_normal_training_is_never_flagged(digits_task):
    """Real training on digits at the default and at a high learning rate, with label smoothing and an
    auxiliary-free nano network: the first epoch starts near log(10) and nothing comes near the bound."""
    for lr, smoothing in ((0.05, 0.0), (0.5, 0.1)):
        curve = train(nano(digits_task), digits_task, TrainConfig(epochs=3, lr=lr, label_smoothing=smoothing,
                                                                   channels_last=False)).curve
        assert len(curve) == 3
        assert max(r["train_loss"] for r in curve) < 2 * CHANCE


# --------------------------------------------------------------------------------------- evaluation

class FixedRanking(nn.Module):
    """Ignores the input: always ranks class 0 first, then 1, 2, ... (logits 9, 8, ..., 0)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.arange(num_classes, 0, -1, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_evaluate_counts_top1_and_top5_exactly(digits_task):
    y = digits_task.val.targets
    metrics = evaluate(FixedRanking(10), digits_task.val, batch_size=100)  # several batches, a partial last one
    assert metrics["acc"] == pytest.approx(float((y == 0).float().mean()))
    assert metrics["top5"] == pytest.approx(float((y < 5).float().mean()))
    assert metrics["loss"] > 0


def test_evaluate_on_a_trained_model(digits_task):
    model = nano(digits_task)
    model.train()
    before = [b.clone() for b in model.buffers()]
    metrics = evaluate(model, digits_task.val)
    assert 0 <= metrics["acc"] <= metrics["top5"] <= 1
    assert math.isfinite(metrics["loss"])
    assert model.training  # mode restored
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))  # ran in eval mode


class TinySplit:
    """A split of `n` random (1, 8, 8) samples in 3 classes: anything with `batches` is a split."""

    def __init__(self, n: int = 10) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size, **_):
        for i in range(0, len(self.y), batch_size):
            yield self.x[i:i + batch_size], self.y[i:i + batch_size]


def test_evaluate_without_top5_for_few_classes():
    metrics = evaluate(FixedRanking(3), TinySplit(10), batch_size=4)
    assert "top5" not in metrics
    assert metrics["acc"] == pytest.approx(4 / 10)  # labels 0, 1, 2, 0, ...: four zeros


def test_fp16_on_the_cpu_is_refused_before_the_storage_is_written(tmp_path):
    import nasopt
    from nasopt.errors import UserError
    from nasopt.search_spaces.nano import NanoSpace

    spec = nasopt.StudySpec(name="fp16", space=NanoSpace(C=4), dataset="synthetic", n_trials=1,
                            objectives={"accuracy": "maximize"},
                            train=nasopt.TrainConfig(epochs=1, precision="fp16"))
    with pytest.raises(UserError, match="fp16"):
        nasopt.run(spec, storage=f"sqlite:///{tmp_path / 'x.db'}", device="cpu", progress=False)
    assert not (tmp_path / "x.db").exists()
