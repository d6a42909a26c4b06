"""Shared fixtures: the in-memory datasets are loaded once per test session."""

from __future__ import annotations

import pytest
import torch

from nasopt.data import load_task


@pytest.fixture(scope="session")
def digits_task():
    """sklearn's 8x8 digits (10 classes, about 1150 train / 290 val samples) on the CPU."""
    return load_task("digits", seed=0)


@pytest.fixture(scope="session")
def synthetic_task():
    """600 noisy class prototypes (1, 8, 8) in 10 classes on the CPU."""
    return load_task("synthetic", seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """Run torch on one CPU thread. The test models are tiny, so a second thread gains nothing, while
    spinning OpenMP threads make a run several times slower when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet_optuna():
    """Optuna's per-trial INFO lines would bury the test output."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test (skipped with the reason when no server answers), dropped after."""
    from test_workers import create_database, drop_database

    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)
