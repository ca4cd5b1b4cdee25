"""Ctrl-C on a command whose work runs as local jobs (`fingerprint train`, `fingerprint
extract`, a local pipeline) printed submitit's controller tracebacks and nothing of its own:
now it ends with one line and exit status 130."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
#: A progress line, stamped with its time.
STAMPED = re.compile(r"\[\d\d:\d\d:\d\d\] ")


@pytest.mark.timeout(300)
def test_ctrl_c_on_a_local_training_is_one_line_and_exit_130(workspace: Workspace) -> None:
    reg = Registry.open(workspace.db_url)
    tiny_dataset(workspace, reg, "blood", sizes=(768, 24, 24))
    reg.dispose()
    env = {**os.environ, "POMLIA_HOME": str(workspace.home), "PYTHONPATH": str(ROOT)}
    args = ["fingerprint", "train", "-n", "e", "blood", "--epochs", "50", "--holdout", "0"]
    # Its own process group, as a terminal's foreground job: Ctrl-C reaches every process.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pomlia_hpc", *args],
        env=env,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    logs = workspace.jobs
    deadline = time.time() + 200
    while not list(logs.rglob("*_0_log.out")):  # the job runs: its controller waits on it
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    # Progress goes to stderr too, each line stamped ("[12:22:19] training 'e': ..."): the
    # interruption is the one other line, and the last.
    lines = [ln for ln in err.splitlines() if ln.strip() and not STAMPED.match(ln)]
    assert len(lines) == 1 and lines[0].startswith("interrupted (Ctrl-C): stopped"), err
    assert err.rstrip().splitlines()[-1] == lines[0], err
