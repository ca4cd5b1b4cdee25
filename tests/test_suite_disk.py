"""The suite's own use of the disk: a passing test's temporary directory does not outlive it,
and a run that starts on a nearly full disk stops at once with one message.

CI at c6b7174 ran on a disk with ~6 GiB free: each test kept its checkpoints and stores (a
whole run ~12 GiB, and pytest kept three runs), the disk filled half-way, and ~1,300 tests
errored on torch.save and Zarr writes with the cause buried among them.

The pytest runs started here load no plugin but the one under test (no conftest, no plugin
autoload): they take a second or two instead of the suite's start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import suite_disk

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "def test_passes(tmp_path):\n"
    "    (tmp_path / 'checkpoint').write_bytes(b'x' * 1000)\n"
    "def test_fails(tmp_path):\n"
    "    (tmp_path / 'checkpoint').write_bytes(b'x' * 1000)\n"
    "    assert False\n"
)


def run_probe(tmp_path: Path, ini: Path, *args: str, env: dict[str, str] | None = None):
    """Run PROBE's two tests under the settings file `ini`; returns the finished process."""
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "test_probe.py").write_text(PROBE)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--noconftest",
            "-q",
            "-c",
            str(ini),
            "--rootdir",
            str(probe),
            f"--basetemp={tmp_path / 'base'}",
            *args,
            str(probe / "test_probe.py"),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_a_passing_test_s_tmp_path_is_removed_when_it_ends(tmp_path: Path) -> None:
    """With the repository's pytest settings, a passing test's tmp_path is gone after it,
    a failing test's is kept for a look."""
    res = run_probe(tmp_path, REPO / "pyproject.toml")
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    kept = sorted(p.parent.name for p in (tmp_path / "base").rglob("checkpoint"))
    assert kept == ["test_fails0"], kept


def test_the_suite_checks_its_disk_before_it_starts(request: pytest.FixtureRequest) -> None:
    hook = request.config.pluginmanager.hook.pytest_sessionstart
    assert suite_disk.pytest_sessionstart in [impl.function for impl in hook.get_hookimpls()]


def test_a_run_on_a_nearly_full_disk_stops_at_once_with_one_message(tmp_path: Path) -> None:
    """The free-space floor set out of reach stands in for a full disk: the run stops before
    any test, exit 4 (a usage error), naming the free space, the directory and what to do;
    with room on the disk the same run goes on to its tests."""
    ini = tmp_path / "empty.ini"
    ini.write_text("[pytest]\n")
    full = run_probe(
        tmp_path, ini, "-p", "tests.suite_disk", env={"POMLIA_TEST_MIN_FREE_TMP_GIB": "1e12"}
    )
    out = full.stdout + full.stderr
    assert full.returncode == 4, out[-3000:]
    assert "GiB free on the disk of" in out and "set TMPDIR" in out, out[-3000:]
    assert "passed" not in out and "failed" not in out, out[-3000:]
    room = run_probe(
        tmp_path, ini, "-p", "tests.suite_disk", env={"POMLIA_TEST_MIN_FREE_TMP_GIB": "0"}
    )
    assert "1 failed, 1 passed" in room.stdout, room.stdout[-3000:] + room.stderr[-3000:]
