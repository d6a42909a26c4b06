"""ProxylessNAS: binary gates, memory of binarised paths, the latency term, one trial per run, resume, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from gradient_resume import kill_mid_search_and_resume
from optuna.trial import TrialState

import nasopt
from nasopt.measure import _latency_build as latency_build
from nasopt.measure._latency_build import build_table
from nasopt.measure._metrics import count_params, peak_live_bytes
from nasopt.oneshot import ProxylessNAS
from nasopt.oneshot.mixed import param_key
from nasopt.oneshot.proxyless import BinaryGateOp
from nasopt.search_spaces.mobile import MobileSpace
from nasopt.search_spaces.nano import NanoSpace

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
TINY = dict(stages=2, max_depth=2, kernels=(3, 5), expands=(1, 3), widths=(0.5, 1.0))
STUDY = ROOT / "studies" / "tiny_proxyless.py"


def macs_table(space, task, path, monkeypatch):
    """A table whose 'milliseconds' are MACs / 1e6: deterministic, so latency tests do not depend on load."""
    from nasopt.measure._metrics import flop_counter_macs

    with monkeypatch.context() as m:
        m.setattr(latency_build, "_measure", lambda jobs, *a, **k: [
            (flop_counter_macs(module, tuple(x.shape[1:])) / 1e6, 0.0) for module, x in jobs])
        return build_table(space, task, repeats=1, warmup=0).save(path)


def test_binary_gate_op_runs_the_sampled_paths_only():
    torch.manual_seed(0)
    op = BinaryGateOp("e", ["conv3x3", "skip", "maxpool3x3"], 4, 4, 1)
    op.eval()
    x = torch.randn(2, 4, 6, 6)
    op.sampled = (0,)
    assert torch.equal(op(x), op.ops[0](x))
    calls = []
    for m in op.ops:
        m.register_forward_hook(lambda m, a, out: calls.append(m))
    gate = torch.tensor([1.0, 0.0], requires_grad=True)
    op.sampled, op.gate = (0, 2), gate
    calls.clear()
    out = op(x)
    assert calls == [op.ops[0], op.ops[2]] and torch.allclose(out, op.ops[0](x))
    (out * out).sum().backward()
    with torch.no_grad():
        grad_out, other = 2 * op.ops[0](x), op.ops[2](x)
    assert torch.allclose(gate.grad[1], (grad_out * other).sum())  # dL/dg_j = <dL/dout, o_j>


def test_alpha_gradient_is_the_papers_binary_gate_estimator(digits_task):
    torch.manual_seed(0)
    strategy = ProxylessNAS()
    net, gates = strategy.supernet(NanoSpace(C=4), digits_task)
    x, y = next(iter(digits_task.train.batches(16)))
    pairs = gates.two_paths(torch.Generator().manual_seed(3))
    gate_vectors = {n: ops[0].gate for n, ops in gates.by_name.items()}
    for g in gate_vectors.values():
        g.retain_grad()
    F.cross_entropy(net(x), y).backward()
    for name, (order, _) in pairs.items():
        alpha = net.alphas[param_key(name)]
        p = F.softmax(alpha.detach()[order], 0)
        dg = gate_vectors[name].grad
        expected = torch.zeros_like(alpha)
        for i in range(2):  # dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i), over the sampled pair
            expected[order[i]] = sum(dg[j] * p[j] * (float(i == j) - p[i]) for j in range(2))
        assert torch.allclose(alpha.grad, expected, atol=1e-7), (alpha.grad, expected)
        assert int((alpha.grad != 0).sum()) <= 2


def test_architecture_step_keeps_the_other_paths_probabilities(digits_task):
    torch.manual_seed(0)
    strategy = ProxylessNAS(arch_lr=0.1)
    net, gates = strategy.supernet(MobileSpace(**TINY), digits_task)
    _, a_opt = strategy.optimizers(net)
    generator = torch.Generator().manual_seed(0)
    x, y = next(iter(digits_task.train.batches(32)))
    for _ in range(3):
        before = {n: F.softmax(a.detach().clone(), 0) for n, a in net.alphas.items()}
        state = generator.get_state()
        pairs = gates.two_paths(generator)
        gates.clear()
        generator.set_state(state)  # arch_step draws the same pairs
        strategy.arch_step(net, gates, a_opt, (x, y), generator)
        for name, (order, _) in pairs.items():
            after = F.softmax(net.alphas[param_key(name)].detach(), 0)
            rest = [i for i in range(len(after)) if i not in order.tolist()]
            assert torch.allclose(after[rest], before[param_key(name)][rest], atol=1e-6)
            assert torch.allclose(after[order].sum(), before[param_key(name)][order].sum(), atol=1e-6)
            assert not torch.allclose(after[order], before[param_key(name)][order])  # the pair did move


def test_binarised_step_holds_two_paths_not_all(digits_task):
    """Peak live bytes (activations, gradients, temporaries) of forward + backward, measured."""
    space = MobileSpace(stages=2, max_depth=2)  # 9 mbconv candidates (+ skip) per block
    torch.manual_seed(0)
    net, gates = ProxylessNAS().supernet(space, digits_task)
    x, y = next(iter(digits_task.train.batches(32)))

    def peak(step, model):
        step()
        model.zero_grad(set_to_none=True)
        return peak_live_bytes(step)

    def two_paths():
        gates.two_paths(torch.Generator().manual_seed(0))
        F.cross_entropy(net(x), y).backward()
        gates.clear()

    gates.two_paths(torch.Generator().manual_seed(0))
    active = {n: ops[0].sampled[0] for n, ops in gates.by_name.items()}
    gates.clear()

    def one_path():
        gates.set({n: (i,) for n, i in active.items()})
        F.cross_entropy(net(x), y).backward()
        gates.clear()

    def all_paths():  # DARTS' mixed op: every candidate's activations
        F.cross_entropy(net(x), y).backward()

    arch = space.derive({n: [float(i == a) for i in range(len(net.decisions[n]))] for n, a in active.items()})
    single = space.build(arch, digits_task)
    standalone = peak(lambda: F.cross_entropy(single(x), y).backward(), single)
    one, two, every = peak(one_path, net), peak(two_paths, net), peak(all_paths, net)
    print(f"\npeak live bytes: single-path network {standalone}, supernet one path {one}, binarised two paths "
          f"{two} ({two / standalone:.2f}x), all paths {every} ({every / two:.1f}x the binarised step)")
    assert one == pytest.approx(standalone, rel=0.05)  # one sampled path is the single-path network
    assert standalone < two <= 2 * standalone  # the second path adds its output, not its activations
    assert every >= 4 * two
    # the search's own architecture step also keeps no weight gradients
    _, a_opt = ProxylessNAS().optimizers(net)
    step = peak(lambda: ProxylessNAS().arch_step(net, gates, a_opt, (x, y), torch.Generator().manual_seed(0)), net)
    assert step <= two
    # and the active paths' parameters are those of the derived single-path network
    stem_head = count_params(net.net.stem) + count_params(net.net.classifier)
    assert stem_head + sum(count_params(ops[0].ops[active[n]]) for n, ops in gates.by_name.items()) == count_params(single)


def test_mobile_supernet_and_derive(digits_task):
    space = MobileSpace(**TINY)
    net, _ = ProxylessNAS(width=0.5).supernet(space, digits_task)
    mbconv = ["mbconv_k3_e1", "mbconv_k3_e3", "mbconv_k5_e1", "mbconv_k5_e3"]
    assert net.decisions == {"stage1.block0": tuple(mbconv), "stage1.block1": (*mbconv, "skip"),
                             "stage2.block0": tuple(mbconv), "stage2.block1": (*mbconv, "skip")}
    assert net.net.stem[0].out_channels == 8  # width 0.5 of 16
    weights = {"stage1.block0": [0, 0, 0, 1], "stage1.block1": [0, 0, 0, 0, 1],
               "stage2.block0": [1, 0, 0, 0], "stage2.block1": [0, 0, 1, 0, 0]}
    arch = space.derive(weights, width=0.5)
    assert arch == {"width": 0.5, "stage1.depth": 1, "stage1.block0.kernel": 5, "stage1.block0.expand": 3,
                    "stage2.depth": 2, "stage2.block0.kernel": 3, "stage2.block0.expand": 1,
                    "stage2.block1.kernel": 5, "stage2.block1.expand": 1}
    assert set(arch) <= set(space.distributions())
    with pytest.raises(nasopt.UserError, match="not one of the space's widths"):
        ProxylessNAS(width=0.75).supernet(space, digits_task)


def test_latency_term_uses_the_table_and_lowers_expected_latency(digits_task, tmp_path, monkeypatch):
    space = MobileSpace(**TINY)
    path = macs_table(space, digits_task, tmp_path / "macs.json", monkeypatch)
    strategy = ProxylessNAS(latency_table=str(path), latency_target_ms=1.0, latency_weight=4.0, arch_lr=0.05)
    model = strategy.latency_model(space, digits_task)
    torch.manual_seed(0)
    net, gates = strategy.supernet(space, digits_task)
    assert model.of(net) == pytest.approx(model.table.predict(space, strategy.derive(space, net.probabilities(),
                                                                                     net.decisions), digits_task))
    assert model.minimum_ms < float(model.expected(net).detach())
    _, a_opt = strategy.optimizers(net)
    generator = torch.Generator().manual_seed(0)
    x, y = next(iter(digits_task.train.batches(32)))
    before = float(model.expected(net).detach())
    for _ in range(20):
        strategy.arch_step(net, gates, a_opt, (x, y), generator, model)
    assert float(model.expected(net).detach()) < before


def test_a_proxyless_run_is_one_complete_trial_like_a_sampled_one(digits_task, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = MobileSpace(**TINY)
    table = macs_table(space, digits_task, tmp_path / "macs.json", monkeypatch)
    common = dict(name="mixed", space=space, dataset="digits", train=nasopt.TrainConfig(epochs=1, batch_size=64),
                  objectives={"accuracy": "maximize", "macs": "minimize"})
    nasopt.run(nasopt.StudySpec(**common, n_trials=1, sampler=optuna.samplers.RandomSampler(seed=0)),
               storage=url, progress=False)
    strategy = ProxylessNAS(epochs=2, batch_size=32, latency_table=str(table), latency_target_ms=0.2)
    study = nasopt.run(nasopt.StudySpec(**common, strategy=strategy), storage=url, progress=False)
    sampled, trial = study.get_trials()
    assert [sampled.state, trial.state] == [TrialState.COMPLETE] * 2
    dists = space.distributions()
    assert all(trial.distributions[n] == dists[n] for n in trial.params)  # the samplers' names and distributions
    assert all(trial.distributions[n] == sampled.distributions[n] for n in set(trial.params) & set(sampled.params))
    depths = {s: trial.params[f"stage{s}.depth"] for s in (1, 2)}
    assert set(trial.params) == {"width", "stage1.depth", "stage2.depth"} | {
        f"stage{s}.block{b}.{k}" for s in (1, 2) for b in range(depths[s]) for k in ("kernel", "expand")}
    assert trial.params["width"] == 1.0  # searched at the largest width
    search = trial.user_attrs["search"]
    assert [r["epoch"] for r in search] == [1, 2]
    assert {"train_acc", "valid_acc", "alpha_entropy", "skips", "expected_latency_ms", "predicted_latency_ms"} <= set(search[0])
    assert set(trial.user_attrs["alphas"][0]["weights"]) == {"stage1.block0", "stage1.block1", "stage2.block0",
                                                             "stage2.block1"}
    assert trial.user_attrs["strategy"]["label"] == "proxyless"
    assert trial.user_attrs["genotype"] == space.describe(trial.params) == trial.user_attrs["arch"]
    # the table's prediction of the derived architecture is its MAC count (the table holds MACs here)
    assert search[-1]["predicted_latency_ms"] == pytest.approx(trial.user_attrs["macs"] / 1e6, abs=1e-4)


def test_make_strategy_by_name():
    from nasopt.oneshot import make_strategy

    assert isinstance(make_strategy("proxyless"), ProxylessNAS)


def run_cli(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "nasopt.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_killed_search_resumes_from_its_last_epoch(tmp_path):
    out = run_cli("latency-table", "--study", str(STUDY), "--repeats", "2", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    retry = kill_mid_search_and_resume(STUDY, "tiny_proxyless", tmp_path, epochs=8, catch=(2, 5))
    assert retry.user_attrs["strategy"]["latency_target_ms"] == 1000.0


def study_file(tmp_path: Path, space: str, strategy: str) -> Path:
    path = tmp_path / "study.py"
    path.write_text(
        "import nasopt\nfrom nasopt.oneshot import ProxylessNAS\n"
        "from nasopt.search_spaces.mobile import MobileSpace\nfrom nasopt.search_spaces.layers import LayersSpace\n"
        f"study = nasopt.StudySpec(name='bad', space={space}, strategy=ProxylessNAS(epochs=1, {strategy}))\n")
    return path


def one_line_error(out, db: Path) -> str:
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (out.returncode, out.stderr)
    assert not db.exists()  # refused before the storage is touched
    return out.stderr


def test_bad_inputs_are_one_line_errors_through_the_cli(digits_task, tmp_path, monkeypatch):
    tiny = "MobileSpace(stages=2, max_depth=2, kernels=(3, 5), expands=(1, 3), widths=(0.5, 1.0))"
    table = macs_table(MobileSpace(**TINY), digits_task, tmp_path / "latency_mobile_cpu.json", monkeypatch)
    db = tmp_path / "nasopt.db"

    err = one_line_error(run_cli("run", str(study_file(tmp_path, "LayersSpace()", "")), "-q", cwd=tmp_path), db)
    assert "cannot search LayersSpace" in err and "mobile" in err and "nano" in err

    other = tmp_path / "other"
    other.mkdir()
    err = one_line_error(run_cli("run", str(study_file(other, tiny, "latency_target_ms=5.0")), "-q", cwd=other),
                         other / "nasopt.db")
    assert "no latency table at latency_mobile_cpu.json" in err and "nasopt latency-table" in err

    stale = tiny.replace("widths=(0.5, 1.0)", "widths=(0.5, 0.75)")
    err = one_line_error(run_cli("run", str(study_file(tmp_path, stale, "latency_target_ms=5.0")), "-q", cwd=tmp_path), db)
    assert f"latency table {table.name} was built for MobileSpace with widths=[0.5, 1.0]" in err
    assert "nasopt latency-table --study" in err and "--device cpu" in err

    minimum = ProxylessNAS(latency_table=str(table)).latency_model(MobileSpace(**TINY), digits_task).minimum_ms
    err = one_line_error(run_cli("run", str(study_file(tmp_path, tiny, "latency_target_ms=1e-6")), "-q", cwd=tmp_path), db)
    assert "latency_target_ms=1e-06 is impossible" in err and f"{minimum:.4f} ms" in err

    with pytest.raises(nasopt.UserError, match="latency_target_ms > 0"):
        ProxylessNAS(latency_target_ms=0)
    with pytest.raises(nasopt.UserError, match="edges"):
        from nasopt.search_spaces.darts_cell import DartsCellSpace

        ProxylessNAS().check(DartsCellSpace(), digits_task)
