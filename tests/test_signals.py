"""Ctrl-C and SIGTERM at any moment of `nasopt run`: one line, exit 130 or 143, never a traceback.

Real subprocesses. Start-up is made long and deterministic by a study file that sleeps while it is
executed (the signal then lands after the command installed its handlers, as it would while torch is
imported); "during a trial" waits until the storage shows a RUNNING trial.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_cli import ENV, NANO

SLOW_START = """\
import time
time.sleep(60)
"""


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nasopt.cli", *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def running_trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0


EXPECTED = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated (SIGTERM)")}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_during_start_up_is_one_line_and_the_documented_exit_code(tmp_path, sig):
    (tmp_path / "slow.py").write_text(SLOW_START)
    process = start(["run", "slow.py"], tmp_path)
    time.sleep(1.5)  # Python is up and the study file is being executed
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    code, word = EXPECTED[sig]
    assert process.returncode == code, (process.returncode, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasopt: ") and word in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow.py"]  # nothing written


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_while_torch_loads_is_one_line(tmp_path, sig):
    """`run` imports torch and loads the data first: a signal then ends the command cleanly too."""
    process = start(["run", str(NANO), "-q"], tmp_path)
    time.sleep(0.8)  # the command is importing torch (about 2 s) or loading the data
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the machine was fast enough to finish before the signal")
    assert process.returncode == EXPECTED[sig][0], (process.returncode, err)
    assert "Traceback" not in err + out, err
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_during_a_trial_fails_it_for_a_retry_and_the_process_ends(tmp_path, sig):
    process = start(["run", str(NANO), "-q", "--set", "train.epochs=200", "--n-trials", "1"], tmp_path)
    wait_for(lambda: running_trials(tmp_path / "nasopt.db") > 0)
    time.sleep(0.5)
    process.send_signal(sig)
    sent = time.monotonic()
    out, err = process.communicate(timeout=60)
    took = time.monotonic() - sent
    assert process.returncode == EXPECTED[sig][0], (process.returncode, err)
    assert "Traceback" not in err + out, err
    assert "retried" in err and "run the same command to resume" in err
    assert running_trials(tmp_path / "nasopt.db") == 0  # failed, with a WAITING retry queued
    with sqlite3.connect(tmp_path / "nasopt.db") as connection:
        states = [s for (s,) in connection.execute("SELECT state FROM trials ORDER BY number")]
    assert states == ["FAIL", "WAITING"], states
    print(f"exit {took:.2f} s after the signal")


@pytest.mark.parametrize("sig, word", [("SIGINT", "interrupted"), ("SIGTERM", "terminated")])
def test_a_signal_that_lands_in_a_finalizer_is_not_lost(sig, word):
    """CPython ignores an exception raised in a finalizer or weakref callback ("Exception ignored in ..."): a
    Ctrl-C that landed in a WeakKeyDictionary's callback once let a run finish as if nothing happened. Under
    `stop_signals` such a signal is delivered again."""
    code = textwrap.dedent(f"""
        import signal, time
        from nasopt.errors import Terminated
        from nasopt.study._signals import stop_signals

        class Finalized:
            def __del__(self):
                signal.raise_signal(signal.{sig})  # its exception is raised, and dropped, in here

        try:
            with stop_signals():
                Finalized()
                time.sleep(5)
            print("missed")
        except Terminated:
            print("terminated")
        except KeyboardInterrupt:
            print("interrupted")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == word and "Exception ignored" not in out.stderr, (out.stdout, out.stderr)


SWALLOWING_STUDY = """\
import time
from pathlib import Path

import nasopt
from nasopt.search_spaces.nano import NanoSpace


def stubborn_loop(model, task, config, reporter):
    # the user's loop swallows Ctrl-C (as C code that clears errors can): nasopt must stop anyway
    for epoch in range(1, config.epochs + 1):
        try:
            Path("epoch").write_text(str(epoch))
            time.sleep(0.2)
        except KeyboardInterrupt:
            Path("swallowed").write_text(str(epoch))
        reporter.report(epoch, {"accuracy": 0.5})
    return {"accuracy": 0.5}


study = nasopt.StudySpec(name="stubborn", space=NanoSpace(C=8), dataset="digits",
                         objectives={"accuracy": "maximize"}, n_trials=1, train_fn=stubborn_loop,
                         train=nasopt.TrainConfig(epochs=100))
"""


def test_a_signal_whose_exception_was_swallowed_still_stops_the_trial(tmp_path):
    """A library or the user's own loop that catches KeyboardInterrupt used to let the run finish with exit
    0 as if no Ctrl-C had come: nasopt raises it again after the epoch, and the trial is queued again."""
    (tmp_path / "stubborn.py").write_text(SWALLOWING_STUDY)
    process = start(["run", "stubborn.py", "-q"], tmp_path)
    wait_for(lambda: (tmp_path / "epoch").exists())
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert (tmp_path / "swallowed").exists()  # the loop did swallow it
    assert int((tmp_path / "epoch").read_text()) < 50
    assert process.returncode == 130, (process.returncode, err)
    assert "Traceback" not in err + out and "retried" in err, err
    with sqlite3.connect(tmp_path / "nasopt.db") as connection:
        states = [s for (s,) in connection.execute("SELECT state FROM trials ORDER BY number")]
    assert states == ["FAIL", "WAITING"], states


def test_a_swallowed_signal_is_raised_when_the_block_ends():
    """No epoch may follow the swallowed signal (a trial's last moments, the sampler): `stop_signals` raises
    it as its block ends."""
    code = textwrap.dedent("""
        import os, signal, time
        from nasopt.errors import Terminated
        from nasopt.study._signals import stop_signals

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                with stop_signals():
                    try:
                        os.kill(os.getpid(), sig)
                        time.sleep(5)
                    except KeyboardInterrupt:
                        pass
                print("missed")
            except Terminated:
                print("terminated")
            except KeyboardInterrupt:
                print("interrupted")
        with stop_signals():
            pass
        print("clear")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["interrupted", "terminated", "clear"], (out.stdout, out.stderr)
