"""A Slurm whose daemons do not answer, as scripts see it: exit 69 ("service unavailable", the
table in ``docs/guide/README.md``) and one line naming the daemon and its address, never exit
2 (bad input) with Slurm's lines pasted in. The real Slurm clients talk to nothing: they read
a copy of the cluster's ``slurm.conf`` whose controller and accounting ports no one listens
on (``SLURM_CONF``)."""

from __future__ import annotations

import operator
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.records import record_submission, squeue_ids
from pomlia_hpc.errors import UNAVAILABLE_EXIT, ClusterError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures import jobfns
from tests.fixtures.factories import tiny_task
from tests.test_cli_exit_status import free_port

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dead_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """``SLURM_CONF`` set to a copy of the cluster's configuration whose controller and
    accounting ports are free ones; yields (controller port, accounting port).

    The copy sets ``MessageTimeout=2``: a client retries a controller that refuses the
    connection once a second for MessageTimeout seconds (9 s at Slurm's default of 10, each
    squeue, sbatch and scancel of these tests) before it gives up with the same error.
    Every timeout of the product's own (60 s) stays far above it."""
    real = Path(os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
    ports = free_port(), free_port()
    text = re.sub(r"(?im)^SlurmctldPort=.*$", f"SlurmctldPort={ports[0]}", real.read_text())
    text = re.sub(r"(?im)^AccountingStoragePort=.*$", f"AccountingStoragePort={ports[1]}", text)
    text = re.sub(r"(?im)^MessageTimeout=.*\n", "", text) + "MessageTimeout=2\n"
    conf = tmp_path / "slurm.conf"
    conf.write_text(text)
    monkeypatch.setenv("SLURM_CONF", str(conf))
    return ports


def pomlia(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pomlia --home HOME ARGS`` in its own process, with this process's ``SLURM_CONF``."""
    env = {k: v for k, v in os.environ.items() if k not in ("POMLIA_DB_URL", "COLUMNS")}
    return subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "--home", str(home), *args],
        env={**env, "PYTHONPATH": str(REPO), "POMLIA_CLUSTER": "slurm-local"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line on stderr of a failed command (asserted: nothing on stdout, no
    traceback, exit 69)."""
    assert proc.returncode == UNAVAILABLE_EXIT, (proc.returncode, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_squeue_without_a_controller_is_exit_69_naming_it(
    workspace: Workspace, dead_slurm: tuple[int, int]
) -> None:
    """`monitor status --json` of a chain: squeue's "Unable to contact slurm controller"
    was `error: squeue refused: ...`, exit 2, as if the request were wrong."""
    settings = workspace.path("jobs", "monitor", "m", "schedule.env")
    settings.parent.mkdir(parents=True)
    settings.write_text("export EVERY=1h\nexport WINDOW=1h\n")
    line = one_error_line(pomlia(workspace.home, "monitor", "status", "--json"))
    assert line.startswith("error: squeue: the Slurm controller (slurmctld at "), line
    assert f":{dead_slurm[0]}, from " in line and "did not answer" in line, line


def test_sacct_without_its_daemon_is_exit_69_in_one_line(
    workspace: Workspace, reg: Registry, dead_slurm: tuple[int, int]
) -> None:
    """`jobs cancel` of a Slurm job asks sacct first: its three lines of retries were pasted
    into the error, exit 2."""
    (job,) = record_submission(
        reg, backend="slurm", scheduler_ids=["999999"], name="j", folder="/x"
    )
    line = one_error_line(pomlia(workspace.home, "jobs", "cancel", str(job)))
    assert line.startswith("error: sacct: Slurm's accounting daemon (slurmdbd at "), line
    assert f":{dead_slurm[1]}, from " in line and "Connection refused" in line, line
    # a listing goes on with the states last recorded, saying why on stderr in one line
    listed = pomlia(workspace.home, "jobs", "list", "--json")
    assert listed.returncode == 0 and listed.stdout.startswith("["), listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1, listed.stderr


def test_sbatch_without_a_controller_is_unavailable_not_a_refusal(
    tmp_path: Path, dead_slurm: tuple[int, int]
) -> None:
    """Every submission (trials, trainings, stages) goes through submitit's sbatch: a
    controller out of reach was "sbatch refused job ...: check the job's resources"."""
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs")
    with pytest.raises(ClusterError) as failed:
        executor.submit(operator.add, 1, 2, name="x").job_id  # noqa: B018
    assert failed.value.exit_code == UNAVAILABLE_EXIT, failed.value
    said = str(failed.value)
    assert said.startswith("sbatch: the Slurm controller (slurmctld at ") and "check" not in said


def test_a_study_whose_trial_cannot_reach_the_controller_is_exit_69(
    workspace: Workspace, reg: Registry, dead_slurm: tuple[int, int]
) -> None:
    """`automl run` stopped with "could not be submitted ...", exit 2, when the controller
    was away: a nightly retrain read it as a wrong request, not a reason to try again."""
    tiny_task(workspace, reg, "blood", sizes=(64, 16, 16))
    proc = pomlia(
        workspace.home, "automl", "run", "blood", "--trials", "1", "--max-epochs", "1",
        "--min-epochs", "1", "--parallel", "1", "--archs", "small_cnn",
    )  # fmt: skip
    assert proc.returncode == UNAVAILABLE_EXIT, proc.stderr
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error: "))
    assert "could not be submitted" in error and "the Slurm controller (slurmctld at " in error
    assert "--resume" in proc.stderr and "Traceback" not in proc.stderr


def dead_accounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Set ``SLURM_CONF`` to a copy of the cluster's configuration whose accounting port is a
    free one (slurmdbd out of reach, the controller answering); returns that port."""
    real = Path(os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
    port = free_port()
    text = re.sub(
        r"(?im)^AccountingStoragePort=.*$", f"AccountingStoragePort={port}", real.read_text()
    )
    conf = tmp_path / "no-slurmdbd.conf"
    conf.write_text(text)
    monkeypatch.setenv("SLURM_CONF", str(conf))
    return port


def test_a_queued_job_is_cancelled_while_sacct_is_down(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jobs cancel` gave up with sacct's error while slurmdbd was down, although the
    controller would have cancelled the job: it cancels what squeue lists, and says that
    sacct could not confirm its state."""
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    handle = executor.submit(jobfns.sleep_for, 300.0, name="cancel-without-sacct")
    assert handle.record_id is not None
    port = dead_accounting(tmp_path, monkeypatch)
    try:
        proc = pomlia(workspace.home, "jobs", "cancel", str(handle.record_id))
        shown = subprocess.run(
            ["scontrol", "-o", "show", "job", handle.job_id], capture_output=True, text=True
        )
    finally:
        subprocess.run(["scancel", handle.job_id], check=False)  # whatever the code did
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"job {handle.record_id} (slurm {handle.job_id}) cancelled\n"
    warning = proc.stderr.strip()
    assert warning.startswith("warning: sacct: Slurm's accounting daemon (slurmdbd at "), warning
    assert f":{port}, from " in warning and "\n" not in warning, warning
    assert warning.endswith("was cancelled on squeue's word that it was still queued or running")
    assert "the same command works" not in warning  # advice for a failure; this one went on
    with reg.session() as s:
        row = s.get(Job, handle.record_id)
        assert row is not None and row.state == "CANCELLED"
    # signalled: CANCELLED, or COMPLETING while its processes end
    assert re.search(r"JobState=(CANCELLED|COMPLETING) ", shown.stdout), shown.stdout


def test_a_job_squeue_no_longer_lists_is_not_cancelled_while_sacct_is_down(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that ended (unrecorded) while slurmdbd is down: nothing to cancel, and its
    final state unknown until sacct answers; exit 69, its row untouched."""
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    handle = executor.submit(operator.add, 1, 2, name="ended-without-sacct")
    assert handle.record_id is not None
    for _ in range(600):  # ends within seconds; the registry is not told
        if not squeue_ids([handle.job_id]):
            break
        time.sleep(0.2)
    dead_accounting(tmp_path, monkeypatch)
    line = one_error_line(pomlia(workspace.home, "jobs", "cancel", str(handle.record_id)))
    assert line.startswith("error: sacct: Slurm's accounting daemon (slurmdbd at "), line
    assert line.endswith(
        f"; squeue does not list job {handle.record_id} (slurm {handle.job_id}): it is no "
        "longer queued or running and nothing was cancelled; the same command records its "
        "final state once sacct answers"
    ), line
    with reg.session() as s:
        row = s.get(Job, handle.record_id)
        assert row is not None and row.state == "PENDING"


def test_a_job_forced_cancelled_while_sacct_is_down_is_listed_as_slurm_ended_it_later(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jobs cancel --force` of a job that had ended while slurmdbd was down marks it
    CANCELLED, how it ended unknown; once sacct answers again, `jobs list` showed that mark
    for good although the job had COMPLETED. It now lists Slurm's state."""
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    handle = executor.submit(operator.add, 1, 2, name="forced-without-sacct")
    rid = handle.record_id
    assert rid is not None
    for _ in range(600):  # ends within seconds; the registry is not told
        if not squeue_ids([handle.job_id]):
            break
        time.sleep(0.2)
    conf = os.environ.get("SLURM_CONF")
    dead_accounting(tmp_path, monkeypatch)
    forced = pomlia(workspace.home, "jobs", "cancel", str(rid), "--force")
    assert forced.returncode == 0, forced.stderr
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None and row.state == "CANCELLED", (row.state, row.exit_cause)
    if conf is None:  # slurmdbd answers again
        monkeypatch.delenv("SLURM_CONF")
    else:
        monkeypatch.setenv("SLURM_CONF", conf)
    listed_as_completed(workspace.home, reg, rid)


def listed_as_completed(home: Path, reg: Registry, rid: int) -> None:
    """Check that `jobs list` (asked again while slurmdbd may record the job's end a moment
    late) records and shows job row ``rid``, marked CANCELLED, as Slurm's COMPLETED."""
    for _ in range(30):
        listed = pomlia(home, "jobs", "list")
        assert listed.returncode == 0, listed.stderr
        with reg.session() as s:
            row = s.get(Job, rid)
            assert row is not None
            if row.state != "CANCELLED":
                break
        time.sleep(1.0)
    assert (row.state, row.exit_cause) == ("COMPLETED", None)
    assert f"{rid} " in listed.stdout and "COMPLETED" in listed.stdout


def test_a_job_force_scancelled_with_sacct_and_squeue_down_is_listed_as_slurm_ended_it(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jobs cancel --force` with slurmdbd down and squeue failing too scancel-s the job; one
    that had COMPLETED (scancel exits 0 for it) was recorded "cancelled by user" for good,
    as no poll asked about a CANCELLED row again. Once sacct answers, `jobs list` now
    records and shows Slurm's COMPLETED."""
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    handle = executor.submit(operator.add, 1, 2, name="forced-without-squeue")
    rid = handle.record_id
    assert rid is not None
    for _ in range(600):  # ends within seconds; the registry is not told
        if not squeue_ids([handle.job_id]):
            break
        time.sleep(0.2)
    conf = os.environ.get("SLURM_CONF")
    with monkeypatch.context() as down:
        dead_accounting(tmp_path, down)
        bin_dir = tmp_path / "no-squeue"
        bin_dir.mkdir()
        (bin_dir / "squeue").write_text(
            "#!/bin/sh\necho 'squeue: error: Unable to contact slurm controller "
            "(connect failure)' >&2\nexit 1\n"
        )
        (bin_dir / "squeue").chmod(0o755)
        down.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        forced = pomlia(workspace.home, "jobs", "cancel", str(rid), "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == f"job {rid} (slurm {handle.job_id}) cancelled\n"
    warning = " ".join(forced.stderr.split())
    assert "; squeue: the Slurm controller (slurmctld at " in warning, warning
    assert warning.endswith(
        f"job {rid} was scancel-ed with --force without Slurm saying whether it still ran: "
        "recorded CANCELLED until sacct answers, then as Slurm says it ended"
    ), warning
    with reg.session() as s:
        row = s.get(Job, rid)
        assert row is not None and (row.state, row.exit_cause) == ("CANCELLED", "cancelled by user")
    assert os.environ.get("SLURM_CONF") == conf  # slurmdbd and squeue answer again
    listed_as_completed(workspace.home, reg, rid)


def test_pipeline_cancel_cancels_its_queued_stage_while_sacct_is_down(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pipeline cancel` stopped at sacct's error with slurmdbd down, and nothing was
    cancelled; now its queued stage job is, and one that ended meanwhile is passed over."""
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs", reg)
    ended = executor.submit(operator.add, 1, 2, name="p-encoder")
    queued = executor.submit(jobfns.sleep_for, 300.0, name="p-extract")
    stages = {"encoder": ended, "extract": queued}
    folder = workspace.path("pipelines", "p")
    folder.mkdir(parents=True)
    write_json_atomic(folder / "spec.json", {"data": {"name": "p"}})
    run = {st: {"action": "run", "job": h.record_id} for st, h in stages.items()}
    write_json_atomic(folder / "run.json", {"mode": "chain", "stages": run})
    for _ in range(600):  # the first ends within seconds; the registry is not told
        if not squeue_ids([ended.job_id]):
            break
        time.sleep(0.2)
    port = dead_accounting(tmp_path, monkeypatch)
    calls = count_calls(tmp_path, monkeypatch, "sacct")
    try:
        proc = pomlia(workspace.home, "pipeline", "cancel", "p")
    finally:
        subprocess.run(["scancel", queued.job_id], check=False)  # whatever the code did
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"cancelled job {queued.record_id} p-extract (Slurm {queued.job_id})\n"
    # It said nothing of sacct: as `jobs cancel` does, it says what rests on squeue's word.
    warning = proc.stderr.strip()
    assert warning.startswith("warning: sacct: Slurm's accounting daemon (slurmdbd at "), warning
    assert f":{port}, from " in warning and "\n" not in warning, warning
    assert "; the jobs above were cancelled as squeue listed them queued or running; " in warning
    assert warning.endswith(
        f"; job {ended.record_id} p-encoder (Slurm {ended.job_id}) is not listed by squeue: it "
        "has ended, its end recorded once sacct answers"
    ), warning
    # sacct once for all, not again for each job: with slurmdbd hanging, each call waited 60 s
    assert calls.read_text() == "x\n"


def count_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> Path:
    """Put first on PATH a ``command`` that notes each call (a line ``x`` in the returned
    file) and runs the real one."""
    real = shutil.which(command)
    assert real is not None
    bin_dir, calls = tmp_path / "counting-bin", tmp_path / f"{command}-calls"
    bin_dir.mkdir()
    script = bin_dir / command
    script.write_text(f'#!/bin/sh\necho x >> {calls}\nexec {real} "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls
