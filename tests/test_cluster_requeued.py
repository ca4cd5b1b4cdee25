"""What the real controller says of jobs that ``sacct`` leaves REQUEUED
(``cluster/requeued.py``): a job that ended within ``MinJobAge`` is listed in its final state;
one it does not know (forgotten, or never there) is not listed at all, alone (``squeue``
fails: "Invalid job id specified") or among others (left out), and counts as LOST."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pomlia_hpc.cluster.requeued import controller_final_states

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
