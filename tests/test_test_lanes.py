"""``scripts/test-lanes.sh`` (``make test``): the Slurm lane runs beside the others, its output
comes after theirs, the exit status is the lanes' together, and the lane never outlives the
script. A stand-in for pytest plays the lanes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pomlia_hpc.processes import pid_alive

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "test-lanes.sh"

#: A stand-in for pytest: the Slurm lane writes its pid and exits SLURM_RC; the other lane
#: waits until the Slurm lane has started (so they run at once) and exits REST_RC.
PYTEST = """\
#!/usr/bin/env bash
case " $* " in
*" --lane=slurm "*)
    echo $$ > "$DIR/slurm.pid"
    echo "slurm lane ran: $*"
    echo "slurm lane threads: $OMP_WAIT_POLICY $OPENBLAS_NUM_THREADS"
    if [[ -n "${SLURM_HANG:-}" ]]; then exec sleep 300; fi
    exit "$SLURM_RC" ;;
*" --lane=rest "*)
    while [[ ! -s "$DIR/slurm.pid" ]]; do sleep 0.05; done
    echo "rest lane ran: $*"
    echo "rest lane threads: $OMP_WAIT_POLICY $OPENBLAS_NUM_THREADS"
    exit "$REST_RC" ;;
esac
exit 99
"""


def _stand_in(tmp_path: Path) -> dict[str, str]:
    """The environment that makes the script run the stand-in pytest, written in ``tmp_path``
    (also its log's folder)."""
    pytest_ = tmp_path / "pytest"
    pytest_.write_text(PYTEST)
    pytest_.chmod(0o755)
    return {"PYTEST": str(pytest_), "DIR": str(tmp_path), "TMPDIR": str(tmp_path)}


def _lanes(
    tmp_path: Path, rest_rc: int, slurm_rc: int, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "-k", "x y"],
        env={
            **os.environ,
            **_stand_in(tmp_path),
            "REST_RC": str(rest_rc),
            "SLURM_RC": str(slurm_rc),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("rest_rc", "slurm_rc", "rc"),
    [(0, 0, 0), (1, 0, 1), (0, 1, 1), (2, 1, 2), (5, 0, 0), (0, 5, 0), (5, 1, 1), (5, 5, 5)],
)
def test_the_exit_status_is_both_lanes(
    tmp_path: Path, rest_rc: int, slurm_rc: int, rc: int
) -> None:
    res = _lanes(tmp_path, rest_rc, slurm_rc)
    assert res.returncode == rc, res.stdout + res.stderr


def test_both_lanes_get_the_arguments_and_the_slurm_lane_is_shown_last(tmp_path: Path) -> None:
    res = _lanes(tmp_path, 0, 0, WORKERS="3")
    out = res.stdout
    assert "rest lane ran: -p no:cacheprovider --lane=rest -n 3 --dist loadfile" in out
    assert (
        out.index("rest lane ran")
        < out.index("the Slurm lane (pytest")
        < out.index("slurm lane ran: -p no:cacheprovider --lane=slurm")
    )
    assert out.count("-k x y") == 2  # one argument each, as given
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("pomlia-slurm-lane")] == []


def test_idle_threads_wait_passively_in_both_lanes_unless_the_caller_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    out = _lanes(tmp_path, 0, 0).stdout
    assert "rest lane threads: PASSIVE 1" in out and "slurm lane threads: PASSIVE 1" in out
    (tmp_path / "slurm.pid").unlink()
    out = _lanes(tmp_path, 0, 0, OMP_WAIT_POLICY="ACTIVE", OPENBLAS_NUM_THREADS="2").stdout
    assert "rest lane threads: ACTIVE 2" in out and "slurm lane threads: ACTIVE 2" in out


def test_a_bad_worker_count_is_refused(tmp_path: Path) -> None:
    res = _lanes(tmp_path, 0, 0, WORKERS="two")
    assert res.returncode == 2
    assert "WORKERS must be a whole number from 1, got 'two'" in res.stderr
    assert not (tmp_path / "slurm.pid").exists()  # nothing started


def test_a_stopped_script_takes_the_slurm_lane_down(tmp_path: Path) -> None:
    """A SIGTERM (CI's timeout) while both lanes run ends the Slurm lane too, and its log goes."""
    with subprocess.Popen(
        ["bash", str(SCRIPT)],
        env={
            **os.environ,
            **_stand_in(tmp_path),
            "REST_RC": "0",
            "SLURM_RC": "0",
            "SLURM_HANG": "1",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as script:
        pid_file = tmp_path / "slurm.pid"
        end = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < end, "the Slurm lane never started"
            time.sleep(0.05)
        lane = int(pid_file.read_text())
        time.sleep(0.5)  # the rest lane has ended; the script waits on the Slurm lane
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=30) == 143
    end = time.monotonic() + 30
    while pid_alive(lane):
        assert time.monotonic() < end, "the Slurm lane outlived the script"
        time.sleep(0.05)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("pomlia-slurm-lane")] == []
