"""The built wheel is the whole package: build it, compare its files with the source tree, install it into
a fresh virtual environment and run a one-trial study through the installed `nasopt` command.

The new environment reuses this one's installed dependencies through a .pth file (no download, no
second copy of torch); nasopt itself must come from the wheel, never from the source checkout.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDY_FILE = Path(__file__).parent / "studies" / "tiny_nano.py"
# where each installed package's files live in the source tree
SOURCES = {"nasopt": ROOT / "nasopt", "nasopt/search_spaces": ROOT / "search_spaces", "nasopt/cli": ROOT / "cli"}
DATA = {"nasopt/py.typed", "nasopt/nanobench.json.gz"}
PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def _run(*args: object, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


def _source_files() -> set[str]:
    """Every .py file of nasopt/, search_spaces/ and cli/, named as installed, plus the package data."""
    files = set(DATA)
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder)
            if "__pycache__" in rel.parts or (package == "nasopt" and rel.parts[0] in ("search_spaces", "cli")):
                continue
            files.add(f"{package}/{rel.as_posix()}")
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (so no build/ or stale file of the checkout gets in)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for folder in SOURCES.values():
        shutil.copytree(folder, src / folder.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in PROJECT_FILES:
        shutil.copy(ROOT / name, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", base / "dist", src, cwd=base)
    (built,) = (base / "dist").glob("nasopt-*.whl")
    return built


def test_wheel_holds_every_module_and_the_package_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    installed = {n for n in names if ".dist-info/" not in n}
    expected = _source_files()
    assert {"nasopt/oneshot/__init__.py", "nasopt/pruners/__init__.py", "nasopt/search_spaces/nano.py",
            "nasopt/cli/main.py"} <= expected
    assert sorted(expected - installed) == [], "source files missing from the wheel"
    assert sorted(installed - expected) == [], "files in the wheel that the source tree does not have"
    assert "nasopt = nasopt.cli.main:entry" in entry_points
    assert "License-Expression: MIT" in metadata


def test_installed_wheel_runs_a_study(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    # install first, with this environment's pip acting on the new one, so that pip sees no other nasopt
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel,
         cwd=tmp_path)
    # then let the new environment import this one's dependencies (torch, optuna, ...) without copying them;
    # a path in a .pth file is added to sys.path, but that folder's own .pth files (the editable
    # install's finder) are not run, so the source checkout stays invisible
    here = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=tmp_path).stdout.strip())
    (site / "nasopt-test-deps.pth").write_text("".join(f"{p}\n" for p in here))

    where = _run(python, "-c", "import nasopt, nasopt.oneshot, nasopt.pruners, nasopt.search_spaces.nano, "
                 "nasopt.cli.main; print(nasopt.__file__)", cwd=tmp_path).stdout.strip()
    assert Path(where).resolve().is_relative_to(site.resolve()), where

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(STUDY_FILE, work / "study.py")
    _run(venv / "bin" / "nasopt", "run", "study.py", "-q", "--n-trials", "1", cwd=work, timeout=180)
    with sqlite3.connect(work / "nasopt.db") as db:
        studies = [name for (name,) in db.execute("SELECT study_name FROM studies")]
        states = [state for (state,) in db.execute("SELECT state FROM trials")]
    assert studies == ["tiny_nano"] and states == ["COMPLETE"]
