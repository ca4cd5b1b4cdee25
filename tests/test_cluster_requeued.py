"""What the real controller says of jobs that ``sacct`` leaves REQUEUED
(``cluster/requeued.py``): a job that ended within ``MinJobAge`` is listed in its final state;
one it does not know (forgotten, or never there) is not listed at all, alone (``squeue``
fails: "Invalid job id specified") or among others (left out), and counts as LOST."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pomlia_hpc.cluster.requeued import controller_final_states
from pomlia_hpc.cluster.sacct import sacct_states, squeue_ids

#: An id far beyond what the test cluster hands out: the controller does not know it.
UNKNOWN = "99999999"


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_the_controller_gives_an_ended_job_and_not_one_it_does_not_know(tmp_path: Path) -> None:
    script = tmp_path / "job.sbatch"  # submitted to start in an hour: it only pends
    script.write_text("#!/bin/sh\n#SBATCH --partition=debug\n#SBATCH --time=1\ntrue\n")
    out = f"--output={tmp_path}/%j.out"
    submit = ["sbatch", "--parsable", "--begin=now+3600", out, str(script)]
    pending = subprocess.run(submit, capture_output=True, text=True, check=True).stdout.strip()
    ended = subprocess.run(submit, capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["scancel", ended], check=True)
        said = controller_final_states([pending, ended, UNKNOWN], 30.0)
        assert pending not in said  # still queued: accounting's word stands
        assert said[ended][0] == "CANCELLED" and said[ended][1] is not None
        assert said[UNKNOWN] == ("LOST", None)
        assert controller_final_states([UNKNOWN], 30.0) == {UNKNOWN: ("LOST", None)}
    finally:
        subprocess.run(["scancel", pending, ended], check=False)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_whole_array_still_pending_is_listed(tmp_path: Path) -> None:
    """The real controller prints a pending array as one line (``189_[0-5%2]``), never as
    ``189``: squeue_ids of the whole array's id must still list it."""
    script = tmp_path / "job.sbatch"  # submitted to start in an hour: it only pends
    script.write_text("#!/bin/sh\n#SBATCH --partition=debug\n#SBATCH --time=1\ntrue\n")
    submit = ["sbatch", "--parsable", "--begin=now+3600", "--array=0-5%2"]
    out = f"--output={tmp_path}/%A_%a.out"
    job = subprocess.run([*submit, out, str(script)], capture_output=True, text=True, check=True)
    array = job.stdout.strip()
    try:
        assert squeue_ids([array, f"{array}_5", f"{array}_6"]) == {array, f"{array}_5"}
    finally:
        subprocess.run(["scancel", array], check=False)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_job_requeued_after_a_node_failure_has_not_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slurm requeues a job whose node failed; until the next attempt starts, sacct's last
    line for it says NODE_FAIL, which pomlia took for its end: the driver recorded it ended
    while the job ran again unwatched. The node failure is sacct's line here (the test
    cluster cannot lose its node); the requeue and the controller are real."""
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/sh\n#SBATCH --partition=debug\n#SBATCH --time=5\nsleep 300\n")
    submit = ["sbatch", "--parsable", f"--output={tmp_path}/%j.out", str(script)]
    job = subprocess.run(submit, capture_output=True, text=True, check=True).stdout.strip()
    try:
        deadline = time.monotonic() + 120
        while job not in squeue_ids([job]) or _state(job) != "RUNNING":
            assert time.monotonic() < deadline, f"job {job} did not start within 120 s"
            time.sleep(0.5)
        # held after the requeue: it stays queued for the test
        subprocess.run(["scontrol", "requeuehold", job], check=True)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        sacct = bin_dir / "sacct"
        ended = (datetime.now() - timedelta(minutes=5)).isoformat(timespec="seconds")
        sacct.write_text(f"#!/bin/sh\necho '{job}|NODE_FAIL|{ended}|{ended}|0:0'\n")
        sacct.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        deadline = time.monotonic() + 60
        # COMPLETING while the requeued attempt still ends: not ended either
        while (st := sacct_states([job], timeout_s=30.0)[job]).state == "COMPLETING":
            assert time.monotonic() < deadline, "the controller did not settle within 60 s"
            time.sleep(0.5)
        assert (st.state, st.requeue_count, st.ended_at) == ("PENDING", 1, None)
        subprocess.run(["scancel", job], check=True)  # cancelled while it waits to run again
        deadline = time.monotonic() + 60
        while (st := sacct_states([job], timeout_s=30.0)[job]).state != "CANCELLED":
            assert time.monotonic() < deadline, f"still {st.state} after the scancel"
            time.sleep(0.5)
        assert st.ended_at is not None and not st.may_requeue
    finally:
        subprocess.run(["scancel", job], check=False)


def _state(job: str) -> str:
    """The controller's state of Slurm job ``job``."""
    out = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job], capture_output=True, text=True)
    return out.stdout.strip()
