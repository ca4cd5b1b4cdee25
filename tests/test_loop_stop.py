"""`pomlia loop watch` stopped by a signal sent to its own process only (systemd's or
Slurm's SIGTERM, a `kill -INT PID`): the local job it started is stopped, the loop run is
recorded interrupted and its request left taken (for the next watcher), in one line, with
exit status 128 + signal.

Real processes: the watcher is `pomlia loop watch --once` in a process of its own, whose loop
has one stage that runs a local job (a process tree of its own) and waits for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pomlia_hpc.data.api import ingest
from pomlia_hpc.loop.driver import open_run
from pomlia_hpc.loop.promote import put_on_slot
from pomlia_hpc.loop.requests import pending
from pomlia_hpc.processes import pid_alive
from pomlia_hpc.registry import LoopRun, Registry, RetrainRequest
from pomlia_hpc.workspace import Workspace
from tests.loop_support import CLASSES, make_model

REPO = Path(__file__).resolve().parents[1]

#: The watcher, with a one-stage loop whose stage runs a local job that writes its pid.
WATCHER = """
import os, sys, time
from pathlib import Path
import pomlia_hpc.loop.api as api
from pomlia_hpc.cli import main
from pomlia_hpc.cluster import Executor

PID_FILE = sys.argv[1]

def work(pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)
    return "slept"

def stage(ctx):
    ex = Executor.from_profile("local", ctx.workspace.path("jobs"), ctx.registry)
    return {"job": ex.submit(work, PID_FILE).result()}

api.run_loop.__kwdefaults__["stages"] = (("harvest", stage),)
sys.argv = ["pomlia", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_watcher_alone_stops_its_job_and_records_the_run(
    tmp_path: Path, workspace: Workspace, reg: Registry, sig: signal.Signals, code: int
) -> None:
    npz = tmp_path / "d.npz"
    np.savez(
        npz,
        **{f"{s}_images": np.zeros((8, 28, 28, 3), np.uint8) for s in ("train", "val", "test")},
        **{f"{s}_labels": np.zeros((8, 1), np.int64) for s in ("train", "val", "test")},
    )
    v = ingest(workspace, reg, "d", npz, class_names=CLASSES)
    model = make_model(reg, tmp_path, "m", 0, v.id)
    put_on_slot(reg, workspace, "s", "m", kind="initial")
    with reg.session() as s:
        s.add(RetrainRequest(model_id=model.id, reason="monitor alarm: mmd"))
    pid_file = tmp_path / "job.pid"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(REPO), POMLIA_HOME=str(workspace.home), COLUMNS="400")
    proc = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(pid_file), "loop", "watch", "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # a group of its own: the signal goes to the watcher only
    )
    deadline = time.monotonic() + 120
    while not pid_file.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert pid_file.is_file(), proc.communicate(timeout=30)
    job_pid = int(pid_file.read_text())
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("stopped")]
    assert len(lines) == 1, err
    assert "loop run 1 of slot s recorded interrupted at stage harvest" in lines[0], err
    assert "1 job(s) it started were stopped" in lines[0] and "Traceback" not in err, err
    deadline = time.monotonic() + 30
    while pid_alive(job_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(job_pid), "the local job runs on"
    with reg.session() as s:
        run = s.get(LoopRun, 1)
        req = s.get(RetrainRequest, 1)
        assert run is not None and run.status == "interrupted" and run.stage == "harvest"
        assert req is not None and req.status == "taken"
    # The next watcher resumes the same loop run for the request.
    assert [(p.id, p.run_id) for p in pending(reg, workspace)] == [(1, 1)]
    assert open_run(reg, "s", champion_id=model.id, params={}, request_id=1) == (1, True)
