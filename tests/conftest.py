"""Registers the shared fixtures of :mod:`tests.fixtures` for every test.

Tests that need a service (Slurm, PostgreSQL) skip with a message saying how to start it, except
under CI (``CI=true``) where a missing service is a failure: CI must execute them.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

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
    sqlite_registry_template,
    wide_console,
    workspace,
)
from tests.fixtures.services import slurm
from tests.suite_disk import pytest_sessionstart

__all__ = [
    "browser",
    "clock",
    "data_add",
    "db_url",
    "fake_slurm",
    "pg_url",
    "pytest_sessionstart",
    "reg",
    "registry",
    "restore_torch_threads",
    "shared_tmp",
    "slurm",
    "sqlite_registry_template",
    "wide_console",
    "workspace",
]


def pytest_configure(config: pytest.Config) -> None:
    import cloudpickle

    ctrl_c_as_in_a_terminal()
    pin_each_worker_to_its_cores()
    share_the_cores_between_workers()
    # A job run in the test's process (the debug executor) that fails on purpose would open
    # the post-mortem debugger under `pytest -s` at a terminal and wait there for a user.
    os.environ.setdefault("PYTHONBREAKPOINT", "0")

    # Job processes (local or Slurm) get the test callables by value: they need not import
    # anything from the tests folder.
    cloudpickle.register_pickle_by_value(jobfns)
    # pytest-xdist's file scheduling (`make test`: --dist loadfile) queues the files by their
    # number of tests, most first, unless --no-loadscope-reorder: switched off here, so the
    # collection order, LONG_FILES first (pytest_collection_modifyitems), is the queue's order.
    if hasattr(config.option, "loadscopereorder"):  # xdist installed
        config.option.loadscopereorder = False


def ctrl_c_as_in_a_terminal() -> None:
    """Give this pytest process Python's usual SIGINT handler (KeyboardInterrupt) if it
    started with SIGINT ignored.

    An asynchronous command of a shell without job control (`bash -c 'pytest ... &'`, a CI
    step started in the background) starts with SIGINT ignored, and SIG_IGN is inherited
    across exec: Python then installs no KeyboardInterrupt handler, nor does any process the
    tests start, and the tests that send Ctrl-C (SIGINT) to a command fail. A handler (unlike
    SIG_IGN) is reset to the default on exec, so the processes started from here (xdist
    workers, the commands under test) get SIGINT at its default again. Only the suite is
    changed: the product still honours a SIGINT ignored by whoever started it (a `nohup`'d
    run), which tests/test_cluster_local.py's ignored-SIGINT tests set up themselves."""
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pin_each_worker_to_its_cores() -> None:
    """In a pytest-xdist worker, run on its own share of the cores (worker i of n: every n-th
    core from the i-th), and so do the commands and jobs its tests start (they inherit the
    affinity, and pomlia sizes its threads by it: ``processes.cpus_available``).

    The suite is CPU-bound on CI's 2 cores: without this, each worker's job processes took
    threads for both cores, and two workers' training jobs at once ran four threads on two
    cores, each slower than alone. Slurm jobs are placed by slurmd, not by this. Only with at
    least as many cores as workers; ``POMLIA_TEST_NO_PIN=1`` leaves the affinity alone."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    cores = sorted(os.sched_getaffinity(0))
    if not worker.startswith("gw") or workers < 2 or len(cores) < workers:
        return
    if os.environ.get("POMLIA_TEST_NO_PIN") == "1":
        return
    os.sched_setaffinity(0, cores[int(worker[2:]) % workers :: workers])


def share_the_cores_between_workers() -> None:
    """In a pytest-xdist worker, give torch's own work in this process (a model trained or
    exported in the test itself) the worker's share of the cores instead of all of them.

    torch starts one thread per core; with two workers on two cores (`make test` in CI) both
    workers' threads spin on both cores and a small model's step slows several-fold (an epoch
    of the loop test's champion: 31 s with 2 threads, 3.7 s with 1, on a loaded 2-core
    machine). Only this process changes: the commands and jobs a test starts choose their
    threads as they do for a user."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


#: The longest test files of the workers' lane (each ~50-150 s of one worker: the sum of their
#: tests' times, the tests marked slurm left out, in a whole run of the suite, 2026-12-08,
#: session 38, less the cuts that session made to some of them), longest first. They are
#: collected first and xdist hands the files out in collection order (its reordering by test
#: count is off, see pytest_configure), so the two workers (`make test`, one file each at a
#: time) start them early and finish together instead of one worker running the longest file
#: alone at the end. Only a scheduling hint: a file missing here runs in its usual place.
LONG_FILES = (
    "test_loop_requests.py",
    "test_export.py",
    "test_gpu_check.py",
    "test_fingerprint_extract.py",
    "test_automl_liveness.py",
    "test_monitor_run.py",
    "test_automl_driver.py",
    "test_automl_resume_running.py",
    "test_loop_e2e.py",
    "test_export_parity.py",
    "test_automl_resume.py",
    "test_fingerprint_model.py",
    "test_full_disk.py",
    "test_fingerprint_refresh.py",
    "test_reproducibility.py",
    "test_cli_exit_status.py",
    "test_registry.py",
    "test_cli_streams.py",
    "test_serve_feedback_race.py",
    "test_loop_gate.py",
    "test_fingerprint_cli.py",
    "test_job_preload.py",
    "test_export_bundle_checks.py",
    "test_cluster_fake_slurm.py",
    "test_cli_tables.py",
)


#: ``--lane`` values: the tests marked slurm, and all the others.
LANES = ("slurm", "rest")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--lane",
        choices=LANES,
        default=None,
        help="run only the tests marked slurm (slurm) or only the others (rest); "
        "scripts/test-lanes.sh (`make test`) runs the two lanes at once",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lane = config.getoption("lane")
    if lane is not None:
        dropped = keep_the_lane(lane, items)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
    long_files_first(items)


def keep_the_lane(lane: str, items: list[Any]) -> list[Any]:
    """Keep in ``items`` (in place) the tests of ``lane`` (one of :data:`LANES`); returns those
    taken out."""
    in_lane = [(it.get_closest_marker("slurm") is not None) == (lane == "slurm") for it in items]
    dropped = [it for it, keep in zip(items, in_lane, strict=True) if not keep]
    items[:] = [it for it, keep in zip(items, in_lane, strict=True) if keep]
    return dropped


def long_files_first(items: list[Any]) -> None:
    """Sort ``items`` (in place, stable) so that the tests of :data:`LONG_FILES` come first, in
    its order."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))
