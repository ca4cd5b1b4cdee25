"""A pytest plugin: stop a run at once, with one message, when the disk of the temporary
directory is nearly full (tests/conftest.py re-exports its hook; tests/test_suite_disk.py
loads it alone, without the conftest's imports)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

#: Free space the suite needs in the temporary directory, GiB: a run's tests hold up to ~1 GiB
#: there at once (checkpoints, stores, logs; a passing test's directory is removed when it
#: ends, pyproject's tmp_path_retention_policy), with room for the jobs' own files beside it.
#: POMLIA_TEST_MIN_FREE_TMP_GIB changes it (tests/test_suite_disk.py sets it out of reach).
MIN_FREE_TMP_GIB = float(os.environ.get("POMLIA_TEST_MIN_FREE_TMP_GIB") or 2.0)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, with one message, when the temporary directory's disk is nearly full.

    A run that starts on a full disk does not fail in one place: from the first checkpoint
    that cannot be written on, most tests error in their set-up (CI at c6b7174: ~1,300
    errors, every one a torch.save or Zarr write failure), and the cause is buried. Only the
    controller checks (xdist workers share its disk)."""
    if hasattr(session.config, "workerinput"):
        return
    where = tempfile.gettempdir()
    free_gib = shutil.disk_usage(where).free / 2**30
    if free_gib < MIN_FREE_TMP_GIB:
        pytest.exit(
            f"only {free_gib:.1f} GiB free on the disk of {where}; the suite needs at least "
            f"{MIN_FREE_TMP_GIB:.0f} GiB there for its tests' checkpoints and stores: free some "
            "space (old /tmp/pytest-of-* runs, clones, venvs) or set TMPDIR to a larger disk",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
