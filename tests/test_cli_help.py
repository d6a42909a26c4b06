"""The command answers at once and explains itself: every option of every subcommand has a help text,
every --help ends with runnable examples, `nasopt --help`, `nasopt run --help`, `nasopt list datasets` and
`nasopt report` import no torch, and `nasopt list KIND` prints the names a study can use (real subprocesses, as a user runs them).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import pytest

from nasopt.cli.main import parser
from nasopt.search_spaces import SPACES

ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
HEAVY = ("torch", "torchvision", "fvcore", "plotly", "onnx", "onnxruntime", "botorch", "sklearn", "pandas")


def nasopt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasopt.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=120)


def commands() -> dict[str, argparse.ArgumentParser]:
    """The top-level parser as "" and each subcommand's parser by name."""
    top = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {"": top, **sub.choices}


@pytest.mark.parametrize("name", list(commands()))
def test_every_option_has_a_help_text_and_every_command_examples(name):
    command = commands()[name]
    missing = [a.option_strings[-1] if a.option_strings else a.dest for a in command._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help.strip())]
    assert not missing, f"`nasopt {name}`: options without a help text: {missing}"
    assert command.epilog and "examples:" in command.epilog, f"`nasopt {name} --help` shows no example"
    examples = [line.strip() for line in command.epilog.splitlines()[1:] if line.strip()]
    assert 1 <= len(examples) <= 3 and all(e.startswith("nasopt ") for e in examples), examples
    assert command.formatter_class is argparse.RawDescriptionHelpFormatter  # the examples keep their lines
    assert command.format_help().rstrip().endswith(command.epilog.rstrip())
    for example in examples:  # each one is a command line the parser accepts
        for line in example.split("#")[0].split("&&"):
            argv = shlex.split(line)
            assert argv[0] == "nasopt", example
            parser().parse_args(argv[1:])


def test_the_subcommand_table_has_a_line_for_every_command():
    top = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    assert {c.dest for c in sub._choices_actions} == set(sub.choices)
    assert all(c.help for c in sub._choices_actions)


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help_exits_0_without_importing_torch(args):
    code = ("import sys\nfrom nasopt.cli.main import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            f"print('loaded:', [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "examples:" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "loaded: []", out.stdout[-300:]
    shell = nasopt(*args)  # and the command as a user types it
    assert shell.returncode == 0 and "examples:" in shell.stdout, shell.stderr


def test_run_help_points_to_the_lists_of_names():
    out = nasopt("run", "--help").stdout
    assert "nasopt list" in out and "samplers" in out and "pruners" in out


def listed_without_torch(kind: str) -> list[str]:
    """The lines of `nasopt list KIND`, run in a fresh interpreter that must not have imported torch (the
    tables and descriptions are read from the source)."""
    code = (f"import sys\nfrom nasopt.cli.main import main\nmain(['list', {kind!r}])\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "False", lines
    return lines[:-1]


def test_list_spaces_names_every_registered_space_without_torch():
    lines = listed_without_torch("spaces")
    names = [line.split()[0] for line in lines]
    assert names == list(SPACES) and {"micro", "mobile", "nano"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in lines), lines  # each with a description


def test_list_datasets_reads_the_table_without_torch():
    from nasopt.data import DATASET_NOTES, DATASETS

    lines = listed_without_torch("datasets")
    assert [line.split(None, 1) for line in lines] == [[n, DATASET_NOTES[n]] for n in DATASETS]


def test_list_metrics_reads_the_table_without_torch():
    from nasopt.study import METRICS

    lines = listed_without_torch("metrics")  # the table and the proxies' descriptions, from the source
    assert [line.split(None, 1) for line in lines] == [[n, what] for n, (what, _) in METRICS.items()]


def test_report_imports_no_torch(tmp_path):
    """The report reads the storage and draws pictures from the params: no network is built."""
    import optuna

    from nasopt.search_spaces.nano import NanoSpace
    from nasopt.space import random_arch

    url = f"sqlite:///{tmp_path / 'r.db'}"
    space = NanoSpace(C=4)
    study = optuna.create_study(study_name="r", storage=url, directions=["maximize", "minimize"])
    for seed in range(3):
        arch = random_arch(space, seed)
        study.add_trial(optuna.trial.create_trial(params=arch, distributions=space.distributions(),
                                                  values=[0.5 + 0.1 * seed, 100.0 * (1 + seed)],
                                                  user_attrs={"arch": space.describe(arch)}))
    out = tmp_path / "r.html"
    code = (f"import sys\nfrom nasopt.cli.main import main\nassert main(['report', 'r', '--storage', {url!r}, "
            f"'-o', {str(out)!r}]) == 0\nprint('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "False"
    assert out.read_text().count("<figure><svg") == 3  # every Pareto-optimal architecture drawn


@pytest.mark.parametrize("kind, some", [("samplers", {"random", "tpe", "nsga2", "rea", "botorch"}),
                                        ("pruners", {"none", "median", "hyperband"}),
                                        ("strategies", {"darts", "pc_darts", "proxyless", "enas"}),
                                        ("datasets", {"digits", "mnist1d", "cifar10", "tensors"}),
                                        ("metrics", {"accuracy", "params", "latency_ms", "flash_kb"})])
def test_list_names_each_kind_with_a_description(kind, some):
    out = nasopt("list", kind)
    assert out.returncode == 0, out.stderr
    rows = [line.split(None, 1) for line in out.stdout.strip().splitlines()]
    assert some <= {r[0] for r in rows}
    assert all(len(r) == 2 and r[1].strip() for r in rows), out.stdout  # nothing without a description


def test_list_of_an_unknown_kind_is_one_line_naming_the_kinds():
    out = nasopt("list", "bogus")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("nasopt: error:") and "bogus" in out.stderr
    assert all(k in out.stderr for k in ("spaces", "samplers", "pruners", "strategies", "datasets", "metrics"))
