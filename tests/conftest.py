"""Registers the shared fixtures of :mod:`tests.fixtures` for every test.

Tests that need a service (Slurm, PostgreSQL) skip with a message saying how to start it, except
under CI (``CI=true``) where a missing service is a failure: CI must execute them.
"""

from __future__ import annotations

import pytest

from tests.fixtures import jobfns
from tests.fixtures.browser import browser
from tests.fixtures.cli import data_add
from tests.fixtures.clock import clock
from tests.fixtures.fake_slurm import fake_slurm
from tests.fixtures.registries import (
    db_url,
    pg_url,
    reg,
    registry,
    restore_torch_threads,
    shared_tmp,
    wide_console,
    workspace,
)
from tests.fixtures.services import slurm

__all__ = [
    "browser",
    "clock",
    "data_add",
    "db_url",
    "fake_slurm",
    "pg_url",
    "reg",
    "registry",
    "restore_torch_threads",
    "shared_tmp",
    "slurm",
    "wide_console",
    "workspace",
]


def pytest_configure(config: pytest.Config) -> None:
    import cloudpickle

    # Job processes (local or Slurm) get the test callables by value: they need not import
    # anything from the tests folder.
    cloudpickle.register_pickle_by_value(jobfns)
