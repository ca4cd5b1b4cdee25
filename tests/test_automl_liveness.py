"""A study whose driver is gone (killed, or its reader gone: ``| head -2``): the driver survives
a closed stdout, and ``pomlia runs list`` flags the runs a dead driver left 'running' with the
command that resumes them."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pomlia_hpc.automl import liveness, records
from pomlia_hpc.automl.liveness import (
    CLAIM_FILE,
    DRIVER_FILE,
    STALE_AFTER_S,
    DriverBeat,
    DriverBusyError,
    DriverRecord,
    driver_gone,
    read_driver,
)
from pomlia_hpc.errors import BUSY_EXIT
from pomlia_hpc.files import held_lock
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok
from tests.fixtures.factories import tiny_study, tiny_task
from tests.fixtures.lock_probe import lock_states, on_path, probe_commands
from tests.fixtures.registries import write_lock_held

ROOT = Path(__file__).resolve().parents[1]
STUDY = ["--trials", "2", "--max-epochs", "1", "--min-epochs", "1", "--no-final"]


def _pomlia(workspace: Workspace, *args: str, **kw: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "POMLIA_HOME": str(workspace.home), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "pomlia_hpc", *args],
        env=env,
        cwd=ROOT,
        **kw,  # type: ignore[call-overload]
    )


def test_driver_records_say_who_is_gone() -> None:
    here, now = socket.gethostname(), time.time()
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert driver_gone(DriverRecord(here, os.getpid(), now, now)) is None
    assert "is not running" in (driver_gone(DriverRecord(here, dead.pid, now, now)) or "")
    assert "stopped at" in (driver_gone(DriverRecord(here, os.getpid(), now, now, now)) or "")
    far = DriverRecord("other-node", 1, now, now - STALE_AFTER_S - 60)
    assert "has not reported for 6 min" in (driver_gone(far, now) or "")
    assert driver_gone(DriverRecord("other-node", 1, now, now - 10), now) is None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("both", [False, True], ids=["stdout", "2>&1"])
def test_a_closed_stdout_does_not_kill_the_driver(workspace: Workspace, both: bool) -> None:
    """`| head -1` and `2>&1 | head -1`: the driver goes on (with `2>&1` the next warning on
    stderr died of the same closed pipe)."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood")
    proc = _pomlia(
        workspace, "automl", "run", "blood", "--study", "piped", *STUDY,
        "--archs", "small_cnn", "--executor", "debug",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT if both else subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.readline()  # `| head -1`: one line, then the reader is gone
    proc.stdout.close()
    err = "" if proc.stderr is None else proc.stderr.read().decode()
    rc = proc.wait(timeout=240)
    runs = records.study_runs(reg, "piped")
    assert rc == 0, (err, [(r.status, r.error) for r in runs])
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert len(runs) == 2 and all(r.status == "ok" for r in runs)
    record = read_driver(workspace, "piped")
    assert record is not None and record.ended is not None  # it says it stopped
    reg.dispose()


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("wide_console")
def test_runs_list_flags_the_runs_of_a_killed_driver(workspace: Workspace) -> None:
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(768, 24, 24))
    proc = _pomlia(
        workspace, "automl", "run", "blood", "--study", "killed", *STUDY, "--archs", "small_cnn",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 200
    while not any(r.status == "running" for r in records.study_runs(reg, "killed")):
        assert proc.poll() is None and time.time() < deadline, "no trial started"
        time.sleep(0.2)
    before = " ".join(cli_ok("runs", "list", "--study", "killed").split())
    assert "stale" not in before  # its driver is at work
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        out = " ".join(cli_ok("runs", "list", "--study", "killed").split())
        assert "running (stale)" in out, out
        assert f"pid {proc.pid} on {socket.gethostname()}) is not running" in out
        assert "pomlia automl run blood --study killed --resume" in out
        driver = json.loads((workspace.path("runs", "killed") / DRIVER_FILE).read_text())
        assert driver["pid"] == proc.pid and driver["ended"] is None
    finally:
        # The killed driver's trial jobs train on (a resume would adopt them): stopped here,
        # not left to finish their epochs beside the next tests.
        with reg.session() as s:
            out_ids = [j.id for j in s.query(Job).filter(Job.ended_at.is_(None))]
        for job_id in out_ids:
            cli_ok("jobs", "cancel", str(job_id))
        reg.dispose()


def test_a_reused_pid_does_not_hide_a_dead_driver(workspace: Workspace) -> None:
    """Same host: a live pid counted as the driver even when the pid was reused by another
    process after the driver's kill -9; the process's start has to match too."""
    workspace.path("runs", "s").mkdir(parents=True, exist_ok=True)
    beat = DriverBeat(workspace, "s")
    beat.start()
    mine = beat.record
    assert mine is not None and mine.proc_ticks is not None  # Linux: /proc start ticks
    assert driver_gone(mine) is None
    boot, ticks = mine.proc_ticks.rsplit(":", 1)
    for other in (f"{boot}:{int(ticks) + 1}", f"another-boot:{ticks}"):  # our pid, not us
        reused = dataclasses.replace(mine, proc_ticks=other)
        assert "is not running" in (driver_gone(reused) or "")


def test_a_stepped_clock_does_not_make_a_live_driver_look_dead(workspace: Workspace) -> None:
    """The start was psutil's create_time (wall clock) compared within 1 s: after the clock
    was stepped a live driver read as dead, and `runs list` suggested a second --resume."""
    workspace.path("runs", "s").mkdir(parents=True, exist_ok=True)
    beat = DriverBeat(workspace, "s")
    beat.start()
    assert beat.record is not None and beat.record.proc_start is not None
    stepped = dataclasses.replace(beat.record, proc_start=beat.record.proc_start - 3600)
    assert driver_gone(stepped) is None
    # A file from before start ticks: the pid decides.
    path = workspace.path("runs", "s", DRIVER_FILE)
    raw = json.loads(path.read_text())
    del raw["proc_ticks"]
    path.write_text(json.dumps(raw | {"proc_start": raw["proc_start"] - 3600}))
    old = read_driver(workspace, "s")
    assert old is not None and old.proc_ticks is None and driver_gone(old) is None


def test_only_the_driver_the_file_names_beats_and_ends(workspace: Workspace) -> None:
    """Two drivers of one study (a second --resume): the first to end wrote `ended` over the
    second's record, and `runs list` called the study's running driver stopped."""
    first, second = DriverBeat(workspace, "twice"), DriverBeat(workspace, "twice")
    first.start()
    # The first looks gone (another host, silent for long), so a second one takes over...
    path = workspace.path("runs", "twice", DRIVER_FILE)
    old = json.loads(path.read_text())
    path.write_text(json.dumps(old | {"host": "other-node", "beat": old["beat"] - 3600}))
    time.sleep(0.01)
    second.start()
    first.record = dataclasses.replace(first.record, host="other-node")  # type: ignore[arg-type]
    # ...and the first, back after all, must not write over the second's record.
    assert second.record is not None
    first.end()
    on_file = read_driver(workspace, "twice")
    assert on_file is not None and on_file.ended is None and on_file == second.record
    second.end()
    assert (read_driver(workspace, "twice") or second.record).ended is not None


def test_a_second_driver_is_refused_while_the_first_is_at_work(workspace: Workspace) -> None:
    """Two drivers of one study (`automl run` and a `--resume` meanwhile) trained the same
    configurations twice: the second is refused, naming the first, until the first ends."""
    first, second = DriverBeat(workspace, "cc"), DriverBeat(workspace, "cc")
    first.start()
    with pytest.raises(DriverBusyError) as refused:
        second.start()
    message = " ".join(str(refused.value).split())
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message
    assert f"kill {os.getpid()}" in message and "study 'cc'" in message
    assert read_driver(workspace, "cc") == first.record  # nothing written by the refused one
    first.end()
    second.start()  # the first ended: a resume takes over
    assert read_driver(workspace, "cc") == second.record
    second.end()


def test_a_driver_on_another_host_is_refused_until_its_heartbeat_is_stale(
    workspace: Workspace,
) -> None:
    path = workspace.path("runs", "far", DRIVER_FILE)
    path.parent.mkdir(parents=True)
    now = time.time()
    far = DriverRecord("other-node", 4242, now - 600, now - 20)
    path.write_text(json.dumps(dataclasses.asdict(far)))
    with pytest.raises(DriverBusyError, match="cannot be checked from here"):
        DriverBeat(workspace, "far").start()
    stale = dataclasses.replace(far, beat=now - STALE_AFTER_S - 1)
    path.write_text(json.dumps(dataclasses.asdict(stale)))
    DriverBeat(workspace, "far").start()
    assert (read_driver(workspace, "far") or far).host == socket.gethostname()


@pytest.mark.timeout(300)
def test_a_resume_while_the_study_runs_is_refused(workspace: Workspace) -> None:
    """The tester's case through the CLI: the second driver exits non-zero with one message
    and trains nothing; each configuration is trained once."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(768, 24, 24))
    proc = _pomlia(
        workspace, "automl", "run", "blood", "--study", "cc", *STUDY, "--archs", "small_cnn",
        "--parallel", "1", "--executor", "debug",  # its trials in its process: stopped with it
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 200
    while read_driver(workspace, "cc") is None:
        assert proc.poll() is None and time.time() < deadline, "the driver did not start"
        time.sleep(0.2)
    # The first driver is stopped (alive, but it cannot finish) until the second has exited:
    # a 2-trial study could otherwise end before the second, importing torch, reaches its
    # check. Stopped while this test holds the claim lock and the registry's write lock, so it
    # cannot be stopped holding either (stopped inside a write, it kept the second waiting for
    # the registry until its busy timeout, 60 s, and the second failed on that instead).
    claim = workspace.path("runs", "cc", CLAIM_FILE)
    with held_lock(claim, "test"), write_lock_held(workspace.home / "registry.db", 120):
        proc.send_signal(signal.SIGSTOP)
    try:
        second = _pomlia(
            workspace, "automl", "run", "blood", "--study", "cc", "--resume",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = (x.decode() for x in second.communicate(timeout=120))
    finally:
        proc.send_signal(signal.SIGCONT)
    text = " ".join((out + err).split())
    assert second.returncode == BUSY_EXIT and "Traceback" not in text, text
    assert f"is being driven by pid {proc.pid}" in text, text
    assert proc.wait(timeout=240) == 0
    runs = records.study_runs(reg, "cc")
    assert len(runs) == 2 and all(r.status == "ok" for r in runs)
    reg.dispose()


def test_a_second_driver_in_the_same_slurm_job_is_refused_until_a_requeue(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `automl run --resume` in one salloc share SLURM_JOB_ID: the second took the study
    over as if the job had been requeued, and both drove it. Only a restarted job takes over."""
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    first, second = DriverBeat(workspace, "salloc"), DriverBeat(workspace, "salloc")
    first.start()  # this process: alive, same job, restart count 0
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(DriverBusyError):
        second.start()
    assert read_driver(workspace, "salloc") == first.record
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(DriverBusyError):  # on this host the live process decides, not Slurm
        second.start()
    assert first.record is not None
    path = workspace.path("runs", "salloc", DRIVER_FILE)  # the first ran on another node
    path.write_text(json.dumps(dataclasses.asdict(first.record) | {"host": "other-node"}))
    second.start()  # Slurm requeued the job: it takes over
    assert read_driver(workspace, "salloc") == second.record
    assert first.record is not None and first.record.slurm_restart == 0
    assert second.record is not None and second.record.slurm_restart == 1


def _fake_sacct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: str) -> Path:
    """An ``sacct`` on PATH that reports job ``job`` in the state the returned file holds."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    sacct = bin_dir / "sacct"
    t = "2026-01-01T00:00:00"
    sacct.write_text(f'#!/bin/sh\necho "{job}|$(cat {state})|{t}|{t}|0:0"\n')
    sacct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return state


def test_a_resubmitted_job_takes_over_once_slurm_says_the_old_one_ended(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`sbatch jobs/automl.sbatch` again with the same STUDY after a TIMEOUT or scancel: the
    killed driver wrote no end, and the new job (on another node) was refused for 5 minutes."""
    path = workspace.path("runs", "resub", DRIVER_FILE)
    path.parent.mkdir(parents=True)
    now = time.time()
    old = DriverRecord("other-node", 4242, now - 600, now - 20, slurm_job="555")
    path.write_text(json.dumps(dataclasses.asdict(old)))
    monkeypatch.setenv("SLURM_JOB_ID", "556")
    state = _fake_sacct(tmp_path, monkeypatch, "555")
    state.write_text("RUNNING")
    with pytest.raises(DriverBusyError) as busy:
        DriverBeat(workspace, "resub").start()
    state.write_text("")  # accounting unreadable: the driver counts as at work
    with pytest.raises(DriverBusyError):
        DriverBeat(workspace, "resub").start()
    assert read_driver(workspace, "resub") == old
    state.write_text("TIMEOUT")
    monkeypatch.delenv("SLURM_JOB_ID")  # also from outside Slurm
    new = DriverBeat(workspace, "resub")
    new.start()
    assert read_driver(workspace, "resub") == new.record
    assert "`scancel 555`" in str(busy.value)  # how to stop it names its job


def _probed_sacct(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, study: str, then: str
) -> Path:
    """An ``sacct`` on PATH that notes whether ``study``'s claim lock is free while it runs,
    runs the shell line ``then`` and reports job 555 ended (TIMEOUT); returns the probe's log."""
    t = "2026-01-01T00:00:00"
    log = tmp_path / "probe.log"
    lock = workspace.path("runs", study, CLAIM_FILE)
    body = f'{then}\necho "555|TIMEOUT|{t}|{t}|0:0"'
    probe_commands(tmp_path / "bin", lock, log, {"sacct": body})
    monkeypatch.setenv("PATH", on_path(tmp_path / "bin"))
    return log


def _old_driver(workspace: Workspace, study: str) -> DriverRecord:
    """A driver on another node, in Slurm job 555, that wrote no end (killed)."""
    path = workspace.path("runs", study, DRIVER_FILE)
    path.parent.mkdir(parents=True)
    now = time.time()
    old = DriverRecord("other-node", 4242, now - 600, now - 20, slurm_job="555")
    path.write_text(json.dumps(dataclasses.asdict(old)))
    return old


def test_the_claim_lock_is_not_held_while_sacct_answers(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A claim asked `sacct` about the driver on file while holding the study's lock: on a
    slow controller every heartbeat of the study was skipped and every claim waited."""
    _old_driver(workspace, "slowctl")
    log = _probed_sacct(workspace, tmp_path, monkeypatch, "slowctl", "true")
    new = DriverBeat(workspace, "slowctl")
    new.start()  # sacct says job 555 ended: taken over
    assert read_driver(workspace, "slowctl") == new.record
    assert lock_states(log) == ["sacct free"]


def test_a_driver_that_claims_while_sacct_answers_is_not_overwritten(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The decision is made before the lock: a driver that claimed the study meanwhile (here
    this live process, on this host) must be seen under the lock and refuse the takeover."""
    _old_driver(workspace, "race")
    now = time.time()
    live = DriverRecord(socket.gethostname(), os.getpid(), now, now)
    racer = tmp_path / "racer.json"
    racer.write_text(json.dumps(dataclasses.asdict(live)))
    path = workspace.path("runs", "race", DRIVER_FILE)
    _probed_sacct(
        workspace, tmp_path, monkeypatch, "race", f'[ -f "{racer}" ] && mv "{racer}" "{path}"'
    )
    with pytest.raises(DriverBusyError, match=f"pid {os.getpid()} on"):
        DriverBeat(workspace, "race").start()
    assert read_driver(workspace, "race") == live


def _sigtermed_driver(
    workspace: Workspace, study: str, stop_line: str | None = None
) -> tuple[subprocess.Popen[bytes], bytes]:
    """A study driver (``DriverBeat(...).driving()``, saying ``stop_line`` last when given) in
    a process of its own, sent SIGTERM once it drives and waited for (60 s at most): the
    process and what it wrote on stderr."""
    said = f"lambda: {stop_line!r}" if stop_line is not None else ""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pomlia_hpc.automl.liveness import DriverBeat\n"
        "from pomlia_hpc.workspace import Workspace\n"
        f"ws = Workspace(home=Path({str(workspace.home)!r}), db_url='sqlite://', "
        "cluster_profile='local')\n"
        f"with DriverBeat(ws, {study!r}).driving({said}):\n"
        "    print('driving', flush=True)\n"
        "    time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SLURM_JOB_ID", None)
    workspace.path("runs", study).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"driving\n"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc, err


def test_a_sigterm_to_the_driver_writes_its_end(workspace: Workspace) -> None:
    """A driver killed by SIGTERM (scancel, the time limit) ran no `finally` and wrote no end,
    so its study looked driven until the heartbeat went stale."""
    proc, _ = _sigtermed_driver(workspace, "term")
    assert proc.returncode == -signal.SIGTERM  # it still dies of the signal
    record = read_driver(workspace, "term")
    assert record is not None and record.pid == proc.pid and record.ended is not None


def test_an_old_drivers_beat_waits_for_the_claim_lock(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """beat/end read driver.json, then wrote it, without the claim lock: a takeover between the
    two was overwritten by the old driver. They hold the lock now (and skip a write rather
    than wait long for it: a heartbeat is advice)."""
    beat = DriverBeat(workspace, "locked")
    beat.start()
    lock = workspace.path("runs", "locked", CLAIM_FILE)
    code = (
        "import sys, time\n"
        "from pomlia_hpc.files import held_lock\n"
        "with held_lock(sys.argv[1], 'test'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], env=env, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        monkeypatch.setattr(liveness, "BEAT_LOCK_WAIT_S", 0.3)
        beat.end()  # the lock is held elsewhere (a takeover at work): nothing written
        assert (read_driver(workspace, "locked") or beat.record).ended is None
    finally:
        holder.kill()
        holder.wait()
    beat.end()
    assert (read_driver(workspace, "locked") or DriverRecord("", 0, 0, 0)).ended is not None


def test_a_sigterm_to_the_driver_leaves_its_own_last_line(workspace: Workspace) -> None:
    """A study driver job stopped by `scancel` ended its log with a heartbeat and slurmstepd's
    CANCELLED line: nothing said how far the study got or how to go on."""
    proc, err = _sigtermed_driver(workspace, "term2", "study term2 stopped by a signal")
    assert proc.returncode == -signal.SIGTERM  # it still dies of the signal
    assert err.decode().strip().endswith("] study term2 stopped by a signal"), err


def test_the_study_drivers_stop_line_says_how_far_and_how_to_resume(
    workspace: Workspace, reg: Registry
) -> None:
    from pomlia_hpc.automl.study import StudyRunner

    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(reg, workspace, "blood", "s9", n_trials=3)
    line = StudyRunner(reg, workspace, spec).stop_line()
    assert line == (
        "study s9 stopped by a signal (SIGTERM: scancel, a time limit or kill), 0 of 3 "
        "trials done; resume with `pomlia automl run blood --study s9 --resume`"
    )
