"""The cluster layer on the local (subprocess) and debug (in-process) backends."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import submitit
import submitit.local.local
from sqlalchemy import select

from pomlia_hpc.cluster import Executor, JobFailedError, distributed_env, expand_hostlist, wait_all
from pomlia_hpc.cluster.cancel import cancel_recorded_job, cancel_scheduler_job
from pomlia_hpc.cluster.records import record_submission, refresh_jobs, this_host
from pomlia_hpc.errors import ClusterError, ConfigError
from pomlia_hpc.processes import pid_alive
from pomlia_hpc.registry import Job, Registry
from tests.fixtures import jobfns


def test_local_submit_records_job(tmp_path: Path, reg: Registry) -> None:
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    h = ex.submit(jobfns.add, 2, 3, name="add")
    assert h.result() == 5
    with reg.session() as s:
        row = s.scalars(select(Job)).one()
    assert (row.backend, row.name, row.state, row.scheduler_id) == (
        "local",
        "add",
        "COMPLETED",
        h.job_id,
    )
    assert row.ended_at is not None


def test_local_array_caps_parallelism(tmp_path: Path, reg: Registry) -> None:
    # 4 tasks for 2 slots: without the cap 3 or 4 would run at once (each a job process)
    log = tmp_path / "log"
    log.mkdir()
    ex = Executor.from_profile("local", tmp_path / "jobs", reg, max_parallel=2)
    handles = ex.map_array(lambda x: jobfns.square_logged(x, str(log), 0.3), list(range(4)))
    assert [h.result() for h in handles] == [x * x for x in range(4)]
    spans = [tuple(map(float, p.read_text().split()[:2])) for p in log.iterdir()]
    # At any job's start, how many others were running? Never more than max_parallel - 1.
    overlap = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlap <= 2
    with reg.session() as s:
        assert len(list(s.scalars(select(Job)))) == 4


def test_failing_job_traceback_reaches_caller_and_registry(tmp_path: Path, reg: Registry) -> None:
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    h = ex.submit(jobfns.boom, "bad pixel spacing", name="boom")
    with pytest.raises(JobFailedError) as exc:
        h.result()
    assert "ValueError: bad pixel spacing" in (exc.value.traceback or "")
    assert exc.value.state == "FAILED"
    with reg.session() as s:
        row = s.scalars(select(Job)).one()
    assert row.state == "FAILED"
    assert "ValueError: bad pixel spacing" in (row.traceback or "")
    assert "bad pixel spacing" in (row.exit_cause or "")


def test_local_cancel(tmp_path: Path, reg: Registry) -> None:
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    h = ex.submit(jobfns.sleep_for, 60)
    h.cancel()
    with pytest.raises(JobFailedError):
        h.result()
    with reg.session() as s:
        assert s.scalars(select(Job)).one().state == "CANCELLED"


@pytest.mark.parametrize("how", ["handle", "scheduler id"])
def test_local_cancel_when_sigint_is_ignored(tmp_path: Path, reg: Registry, how: str) -> None:
    # A job started from a background job of a non-interactive shell inherits SIGINT ignored;
    # cancel must still stop it: the controller and its task (which would otherwise run on).
    trace = tmp_path / "task-outlived-the-cancel"
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ex = Executor.from_profile("local", tmp_path / "jobs", reg)
        # 60 s, so that no timing margin can race: an orphaned task is still alive when the
        # wait below gives up, which the pid check catches
        h = ex.submit(jobfns.touch_after, str(trace), 60)
        deadline = time.monotonic() + 60  # wait until the task process runs
        while not psutil.Process(int(h.job_id)).children() and time.monotonic() < deadline:
            time.sleep(0.1)
        (task,) = psutil.Process(int(h.job_id)).children()
        if how == "handle":
            h.cancel()
        else:
            cancel_scheduler_job("local", h.job_id)
        with pytest.raises(JobFailedError):
            h.result()
        assert not trace.exists()  # result() came back before the task's end
    finally:
        signal.signal(signal.SIGINT, old)
    # The task was killed too, not orphaned: its process is gone (an orphan would sleep on
    # past this wait) and it never wrote its trace.
    deadline = time.monotonic() + 30
    while pid_alive(task.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(task.pid) and not trace.exists()


def test_debug_executor_runs_in_process(tmp_path: Path) -> None:
    ex = Executor.from_profile("debug", tmp_path / "jobs")
    handles = ex.map_array(lambda x: x + 1, [1, 2, 3])
    assert wait_all(handles, poll_s=0.01) == [2, 3, 4]


def test_unknown_resource_key_rejected(tmp_path: Path) -> None:
    ex = Executor.from_profile("local", tmp_path / "jobs")
    with pytest.raises(ConfigError, match="valid keys: cpus_per_task"):
        ex.submit(jobfns.add, 1, 2, resources={"cpu": 4})


def test_hostlist_expansion() -> None:
    assert expand_hostlist("gpu[01-03,07],cpu5") == ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]
    assert expand_hostlist("hkn0401") == ["hkn0401"]
    assert expand_hostlist("n[8-10]x") == ["n8x", "n9x", "n10x"]


def test_distributed_env_from_slurm() -> None:
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_JOB_NODELIST": "hkn[0401-0402]",
    }
    out = distributed_env(env)
    assert out == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "MASTER_ADDR": "hkn0401",
        "MASTER_PORT": str(20000 + 4242),
    }
    # Values torchrun set win; values merely inherited from a parent process do not.
    assert distributed_env({**env, "MASTER_PORT": "1234"})["MASTER_PORT"] == str(20000 + 4242)
    launched = {**env, "MASTER_PORT": "1234", "TORCHELASTIC_RUN_ID": "x"}
    assert distributed_env(launched)["MASTER_PORT"] == "1234"


def test_distributed_env_outside_slurm() -> None:
    out = distributed_env({"MASTER_PORT": "50297", "RANK": "3"})  # leftovers of a parent
    assert (out["RANK"], out["WORLD_SIZE"], out["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    assert 0 < int(out["MASTER_PORT"]) < 65536


def test_pid_alive_running_zombie_and_gone() -> None:
    running = subprocess.Popen(["sleep", "30"])
    exited = subprocess.Popen(["true"])
    try:
        assert pid_alive(running.pid)
        deadline = time.monotonic() + 10
        while pid_alive(exited.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(exited.pid)  # exited, not yet reaped: a zombie counts as gone
    finally:
        running.kill()
        running.wait()
        exited.wait()
    assert not pid_alive(running.pid)


def _wait_all_in_thread(handles: list, timeout_s: float = 120) -> list:
    """wait_all in a thread, so that a hang fails the test instead of stopping the run."""
    out: dict[str, list] = {}
    t = threading.Thread(target=lambda: out.setdefault("r", wait_all(handles, poll_s=0.1)))
    t.daemon = True
    t.start()
    t.join(timeout_s)
    assert not t.is_alive(), "wait_all still waiting"
    return out["r"]


def test_wait_all_returns_for_failed_and_cancelled_submissions(tmp_path: Path) -> None:
    # max_parallel=1: a failed submission that kept its slot would stop every later job.
    ex = Executor.from_profile("local", tmp_path / "jobs", None, max_parallel=1)
    unpicklable = threading.Lock()
    handles = ex.map_array(lambda x: x, [unpicklable, 1, 2, 3])
    handles[3].cancel()  # still queued behind 1 and 2
    out = _wait_all_in_thread(handles)
    assert out[1:3] == [1, 2]
    assert isinstance(out[0], ClusterError) and not isinstance(out[0], JobFailedError)
    assert isinstance(out[3], ClusterError) and "cancelled before submission" in str(out[3])
    assert handles[0].done() and handles[3].done() and not handles[3].submitted


def test_local_rows_follow_the_process_without_result(tmp_path: Path, reg: Registry) -> None:
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    slow = ex.submit(jobfns.sleep_for, 120, name="slow")
    ok = ex.submit(jobfns.add, 1, 2, name="ok")
    bad = ex.submit(jobfns.boom, "x", name="bad")
    deadline = time.monotonic() + 60
    while not (ok.done() and bad.done()) and time.monotonic() < deadline:
        time.sleep(0.1)
    refresh_jobs(reg)  # what `pomlia jobs list` does in another process; no result() called
    with reg.session() as s:
        states = {r.name: r.state for r in s.scalars(select(Job))}
        ended = {r.name: r.ended_at for r in s.scalars(select(Job))}
    assert states == {"slow": "RUNNING", "ok": "COMPLETED", "bad": "FAILED"}
    assert ended["slow"] is None and ended["ok"] is not None
    slow.cancel()


def test_cancel_refuses_a_pid_that_is_not_a_job(tmp_path: Path, reg: Registry) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(ClusterError, match=f"process {other.pid} is not the submitit job"):
            cancel_scheduler_job("local", str(other.pid), folder=str(tmp_path))
        # A recorded job whose pid now runs something else has ended: it is not signalled.
        (rid,) = record_submission(
            reg,
            backend="local",
            scheduler_ids=[str(other.pid)],
            name="gone",
            folder=str(tmp_path),
            meta={"host": this_host()},
        )
        assert cancel_recorded_job(reg, rid) == "FAILED"
        assert pid_alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_cancel_after_completion_keeps_the_state(tmp_path: Path, reg: Registry) -> None:
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    h = ex.submit(jobfns.add, 1, 2)
    assert h.result() == 3
    h.cancel()
    assert cancel_recorded_job(reg, h.record_id or 0) == "COMPLETED"
    with reg.session() as s:
        assert s.scalars(select(Job)).one().state == "COMPLETED"


def test_cancelled_row_gets_an_end_time(tmp_path: Path, reg: Registry) -> None:
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    h = ex.submit(jobfns.sleep_for, 120)
    assert cancel_recorded_job(reg, h.record_id or 0) is None
    with reg.session() as s:
        row = s.scalars(select(Job)).one()
    assert (row.state, row.exit_cause) == ("CANCELLED", "cancelled by user")
    assert row.ended_at is not None


def test_local_job_inside_a_slurm_allocation_is_not_a_slurm_task() -> None:
    env = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SUBMITIT_EXECUTOR": "local"}
    out = distributed_env(env)
    assert (out["RANK"], out["WORLD_SIZE"], out["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    assert out["MASTER_PORT"] != str(20000 + 4242)
    assert distributed_env({**env, "SUBMITIT_EXECUTOR": "slurm"})["RANK"] == "3"


def test_jobs_cancel_of_a_local_job_is_one_line_naming_the_registry_job(
    tmp_path: Path, reg: Registry, capfd: pytest.CaptureFixture[str]
) -> None:
    """`pomlia jobs cancel` of a local training: the submitting command printed submitit's
    controller traceback, then "job <pid> ended CANCELLED: KeyboardInterrupt". Now: no
    traceback, and the error names the registry job and the cancellation."""
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    h = ex.submit(jobfns.sleep_for, 120)
    deadline = time.time() + 60
    while not list((tmp_path / "jobs").glob("*_0_log.out")):  # the task runs: the controller waits
        assert time.time() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    assert cancel_recorded_job(reg, h.record_id or 0) is None  # what `pomlia jobs cancel` does
    with pytest.raises(JobFailedError) as err:
        h.result()
    assert (
        str(err.value) == f"job {h.record_id} (local {h.job_id}) ended CANCELLED: cancelled by user"
    )
    time.sleep(0.5)  # the controller's last words, if any
    assert "Traceback" not in capfd.readouterr().err
    with reg.session() as s:
        assert s.scalars(select(Job)).one().exit_cause == "cancelled by user"


def test_the_local_job_controller_entry_is_cheap() -> None:
    """`python -m pomlia_hpc.cluster.submitit_local` imported the whole cluster package
    (sqlalchemy, the registry, submitit's executors): a second more per local job."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, pomlia_hpc.cluster.submitit_local; "
        "print(sorted(m for m in ('sqlalchemy', 'pomlia_hpc.registry', "
        "'pomlia_hpc.cluster.executor') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    from pomlia_hpc.cluster import Executor  # the package's names still resolve

    assert Executor.__name__ == "Executor"


def test_local_job_stopped_by_ctrl_c_is_recorded_cancelled(tmp_path: Path, reg: Registry) -> None:
    """Ctrl-C in a terminal signals the job's processes too (one process group), and the
    submitting command goes down before it records anything: the row said FAILED ("ended
    without a result") while the command said "interrupted (Ctrl-C)"."""
    import os

    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    h = ex.submit(jobfns.sleep_for, 60, name="slow")
    controller = psutil.Process(int(h.job_id))
    deadline = time.monotonic() + 60  # wait until the task process runs
    while not controller.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in [controller, *controller.children()]:  # what the terminal's SIGINT reaches
        os.kill(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while pid_alive(controller.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    refresh_jobs(reg)  # `pomlia jobs list` in another process
    with reg.session() as s:
        row = s.scalars(select(Job)).one()
        state, cause, started = row.state, row.exit_cause or "", (row.meta or {})["controller"]
    assert state == "CANCELLED" and "SIGINT" in cause, (state, cause)
    # The marker is named by the process the row recorded (pid and start), not by its pid.
    from pomlia_hpc.cluster.submitit_local import cancel_marker

    assert started and cancel_marker(ex.folder, h.job_id, started).is_file()
    assert not cancel_marker(ex.folder, h.job_id).exists()
    # The submitting process, had it survived, records the same.
    with pytest.raises(JobFailedError) as exc:
        h.result()
    assert exc.value.state == "CANCELLED" and "SIGINT" in str(exc.value)


def test_a_cancel_marker_of_an_earlier_job_with_the_same_pid_is_forgotten(tmp_path: Path) -> None:
    """A marker left by a job stopped by Ctrl-C stayed: a later local job given the same pid
    that failed was recorded CANCELLED instead of FAILED."""
    import os
    import sys

    from pomlia_hpc.cluster.localresult import local_cancel_cause
    from pomlia_hpc.cluster.submitit_local import SIGINT_CAUSE, cancel_marker

    folder = tmp_path / "jobs"
    folder.mkdir()
    job_id = str(os.getpid())  # with a shell, the controller's job id is its parent's pid
    cancel_marker(folder, job_id).write_text(SIGINT_CAUSE + "\n")
    env = {
        **os.environ,
        "SUBMITIT_LOCAL_NTASKS": "1",
        "SUBMITIT_LOCAL_COMMAND": "false",
        "SUBMITIT_LOCAL_TIMEOUT_S": "60",
        "SUBMITIT_LOCAL_SIGNAL_DELAY_S": "1",
        "SUBMITIT_STDERR_TO_STDOUT": "",
        "SUBMITIT_LOCAL_WITH_SHELL": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc.cluster.submitit_local", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert local_cancel_cause(str(folder), job_id) is None
    assert not cancel_marker(folder, job_id).exists()


def test_a_cancel_marker_of_another_process_with_the_same_pid_is_not_taken(
    tmp_path: Path, reg: Registry
) -> None:
    """A local job's Ctrl-C marker was named by its pid alone: a job whose pid had been a
    cancelled job's was recorded CANCELLED from that job's marker, until its controller
    deleted the marker at its start (and if it never got there, for good). The marker of a
    process with the same pid but another start (another boot id or start ticks) is not the
    job's."""
    from pomlia_hpc.cluster.attach import AttachedJob
    from pomlia_hpc.cluster.localresult import local_cancel_cause
    from pomlia_hpc.cluster.records import refresh_local_jobs
    from pomlia_hpc.cluster.submitit_local import SIGINT_CAUSE, cancel_marker

    gone = subprocess.Popen(["true"])
    gone.wait()
    pid, folder = str(gone.pid), tmp_path / "jobs"
    folder.mkdir()
    mine, other = "boot-a:4242", "boot-a:77"  # same boot, the pid reused by a later process
    cancel_marker(folder, pid, other).write_text(SIGINT_CAUSE + "\n")
    cancel_marker(folder, pid).write_text(SIGINT_CAUSE + "\n")  # a marker by pid alone too
    assert local_cancel_cause(str(folder), pid, mine) is None
    ids = [
        record_submission(
            reg,
            backend="local",
            scheduler_ids=[pid],
            name=name,
            folder=str(folder),
            meta={"host": this_host(), "controller": mine},
        )[0]
        for name in ("failed", "attached")
    ]
    with reg.session() as s:
        attached = AttachedJob(
            reg, s.get(Job, ids[1]), has_result=lambda: False, failure=lambda: None
        )
    attached.check_local()
    assert attached.cancel_cause is None
    refresh_local_jobs(reg, [ids[0]])
    with reg.session() as s:
        row = s.get(Job, ids[0])
        assert row is not None and row.state == "FAILED", (row.state, row.exit_cause)
    # Its own marker is taken.
    cancel_marker(folder, pid, mine).write_text(SIGINT_CAUSE + "\n")
    assert local_cancel_cause(str(folder), pid, mine) == SIGINT_CAUSE
    attached.check_local()
    assert attached.cancel_cause == SIGINT_CAUSE


def test_a_local_job_collected_late_ends_when_it_wrote_its_result(
    tmp_path: Path, reg: Registry
) -> None:
    # A local job's row ended when its result was collected: a driver busy elsewhere for a
    # while recorded its own time as the job's end (the run's cost with it).
    ex = Executor.from_profile("local", tmp_path / "jobs", reg)
    h = ex.submit(jobfns.add, 2, 3, name="add")
    h.job(None).wait()
    time.sleep(1.5)  # the driver looks later
    assert h.result() == 5
    written = h.job(None).paths.result_pickle.stat().st_mtime
    with reg.session() as s:
        row = s.scalars(select(Job)).one()
    assert row.ended_at is not None
    assert abs(row.ended_at.timestamp() - written) < 0.01


def test_a_plain_submitit_local_executor_in_the_same_process_keeps_submitits_controller(
    tmp_path: Path, reg: Registry
) -> None:
    """pomlia's local backend replaced submitit's ``start_controller`` in submitit's module,
    so every local executor in the process, another library's too, started pomlia's
    controller. Only pomlia's own executors start it now."""
    ours = Executor.from_profile("local", tmp_path / "ours", reg).submit(jobfns.sleep_for, 1.0)
    plain = submitit.LocalExecutor(folder=tmp_path / "plain").submit(jobfns.sleep_for, 1.0)
    ours_cmd, plain_cmd = _command_line(ours.job_id), _command_line(plain.job_id)
    assert "-m pomlia_hpc.cluster.submitit_local" in ours_cmd
    assert "-m submitit.local._local" in plain_cmd
    assert submitit.local.local.start_controller.__module__ == "submitit.local.local"
    assert ours.result() == plain.result() == "woke up"


def _command_line(pid: str) -> str:
    """The command line of process ``pid``, once it shows one (it may read empty while the
    process starts its program)."""
    deadline = time.monotonic() + 10
    while not (words := psutil.Process(int(pid)).cmdline()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return " ".join(words)
