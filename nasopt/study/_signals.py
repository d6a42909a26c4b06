"""Signals and the watchdog of a worker: SIGTERM raised as `Terminated` (handled like Ctrl-C), and
`--trial-timeout`, which fails a trial that runs too long and ends a worker stuck in C code."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

from nasopt.errors import Terminated, UserError
from nasopt.study import _recovery

__all__ = ["EXIT_HUNG", "HARD_GRACE", "TrialTimeout", "check_stop", "stop_signals", "Watchdog"]

EXIT_HUNG = 3  # a worker ended by its watchdog: the supervisor starts a new one
HARD_GRACE = 5.0  # extra seconds a timed-out trial gets to return before its process is ended


class TrialTimeout(_recovery.NotRetried):
    """A trial ran longer than `trial_timeout`."""


_received: list[int] = []  # the stop signals received under `stop_signals`, until its block ends
_raised_again: list[bool] = []  # `check_stop` raised one of them again (a signal sent again is then not needed)
_active: list[bool] = []  # a `stop_signals` block is running (one entry per nested block)


def _stop_error(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def check_stop() -> None:
    """Raise again a Ctrl-C or SIGTERM received under `stop_signals` whose exception never reached nasopt.

    A signal's exception is raised in whatever Python code runs when it lands; code that swallows errors
    (C code that clears them, e.g. a `hasattr` check from a C extension reaching a Python `__getattr__`)
    then loses it and the run goes on as if nothing happened. The trial loops call this after every epoch;
    `stop_signals` checks once more when its block ends."""
    if _received:
        _raised_again.append(True)
        raise _stop_error(_received[0])


def _send_again(signum: int) -> None:
    if _active and not _raised_again:  # (not once check_stop raised it, nor after the block: clean-up runs)
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def stop_signals(*, ignore_sigint: bool = False) -> Iterator[None]:
    """SIGTERM raises `Terminated` (once: the clean-up that follows is not interrupted again); SIGINT
    stays Ctrl-C, or is ignored in a forked worker, whose supervisor forwards a SIGTERM instead. Either,
    when it lands in a finalizer or weakref callback (where CPython ignores exceptions), is raised again;
    when some other code swallowed it, `check_stop` (after each epoch) or the end of the block raises it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            _received.append(signum)
            raise Terminated()

    def on_int(signum: int, frame: Any) -> None:
        _received.append(signum)
        raise KeyboardInterrupt()

    def unraisable(info: Any) -> None:
        """CPython drops an exception raised inside a finalizer or a weakref callback ("Exception ignored
        in ..."): a Ctrl-C or SIGTERM that lands there would be lost and the run go on. Deliver it again."""
        nonlocal stopping
        if isinstance(info.exc_value, KeyboardInterrupt):
            terminated = isinstance(info.exc_value, Terminated)
            if terminated:
                stopping = False  # the SIGTERM was never raised where it counts: let it raise again
            # sent again shortly, from another thread: the handler then runs in the code that was stopped
            again = threading.Timer(0.05, _send_again, (signal.SIGTERM if terminated else signal.SIGINT,))
            again.daemon = True
            again.start()
            return
        old_hook(info)

    old_term = signal.signal(signal.SIGTERM, on_term)
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else on_int)
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    _active.append(True)
    try:
        yield
        check_stop()  # the block ended normally although a signal arrived: its exception was swallowed
    finally:
        _active.pop()
        _received.clear()
        _raised_again.clear()
        sys.unraisablehook = old_hook
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


class Watchdog:
    """Fails a trial that runs longer than `seconds` (see the module docstring)."""

    def __init__(self, seconds: float, grace: float = HARD_GRACE) -> None:
        self.seconds, self.grace = seconds, grace
        self._armed: object | None = None

    def _alarm(self, signum: int, frame: Any) -> None:
        if self._armed is not None:  # re-fires every second until the trial is out (a swallowed one)
            raise TrialTimeout(f"timed out after {self.seconds:g} s (--trial-timeout)")

    def _hard(self, token: object, trial: optuna.Trial) -> None:
        if self._armed is not token:
            return
        reason = f"timed out after {self.seconds:g} s (--trial-timeout) and did not stop; its worker was ended"

        def mark() -> None:
            with contextlib.suppress(Exception):
                _recovery.record_failure(trial, reason, final=True)
                trial.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

        # in a thread of its own: the stuck trial may hold a storage lock (else its pid marks it dead)
        marker = threading.Thread(target=mark, daemon=True)
        marker.start()
        marker.join(timeout=10)
        print(f"nasopt: trial {trial.number} {reason}", file=sys.stderr, flush=True)
        os._exit(EXIT_HUNG)

    def wrap(self, objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
        if threading.current_thread() is not threading.main_thread():
            raise UserError("--trial-timeout needs the run in the main thread (it uses SIGALRM)")
        signal.signal(signal.SIGALRM, self._alarm)

        def call(trial: optuna.Trial) -> Any:
            token = object()
            timer = threading.Timer(self.seconds + self.grace, self._hard, args=(token, trial))
            timer.daemon = True
            self._armed = token
            signal.setitimer(signal.ITIMER_REAL, self.seconds, 1.0)
            timer.start()
            try:
                return objective(trial)
            except TrialTimeout as e:
                self._disarm(timer)
                _recovery.record_failure(trial, str(e), final=True)  # (if the trial has not yet)
                raise
            finally:
                self._disarm(timer)

        return call

    def _disarm(self, timer: threading.Timer) -> None:
        self._armed = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        timer.cancel()
