"""Slurm's client commands misbehaving as they do on a loaded or re-configured cluster: a
daemon that does not answer in time, a site that authenticates with a JWT. Fast tests: fake
``sbatch``/``sacct``/``squeue``/``scancel`` scripts first on PATH, which read the real
cluster's ``slurm.conf`` through ``SLURM_CONF`` as the real clients would (nothing shared is
stopped). ``tests/test_cli_slurm_unreachable.py`` has the daemons out of reach for real."""

from __future__ import annotations

import operator
import os
import re
import shutil
import subprocess
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import pomlia_hpc.cluster.sacct as sacct_module
from pomlia_hpc.cluster import Executor, cancel, scancel
from pomlia_hpc.cluster.batch import cancel_named, jobs_named, submit_script
from pomlia_hpc.cluster.records import sacct_states, squeue_ids
from pomlia_hpc.cluster.terminate import cancel_own_jobs
from pomlia_hpc.errors import UNAVAILABLE_EXIT, ClusterError
from tests.fixtures.waiting import wait_until

CONF = """\
SlurmctldHost=head1(10.0.0.1)
SlurmctldPort=7817
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=db1
AccountingStoragePort=7819
"""


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on PATH for fake Slurm commands, and ``SLURM_CONF`` set to a
    configuration with a controller at head1:7817 and slurmdbd at db1:7819."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    conf = tmp_path / "slurm.conf"
    conf.write_text(CONF)
    monkeypatch.setenv("SLURM_CONF", str(conf))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def fake(bin_dir: Path, command: str, body: str) -> None:
    """Write ``bin_dir/command`` as a shell script running ``body``."""
    script = bin_dir / command
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)


def test_an_sacct_timeout_names_slurmdbd_and_its_address(fake_bin: Path) -> None:
    """`sacct did not answer within 60 s` named neither the daemon nor where it is, where a
    refused connection names both."""
    fake(fake_bin, "sacct", "exec sleep 30")
    with pytest.raises(ClusterError) as failed:
        sacct_states(["4242"], timeout_s=0.5)
    assert failed.value.exit_code == UNAVAILABLE_EXIT
    said = str(failed.value)
    assert said.startswith("sacct: Slurm's accounting daemon (slurmdbd at db1:7819, from "), said
    assert said.endswith("did not answer within 0.5 s"), said


def test_an_squeue_timeout_names_the_controller_and_its_address(fake_bin: Path) -> None:
    fake(fake_bin, "squeue", "exec sleep 30")
    with pytest.raises(ClusterError) as failed:
        squeue_ids(["4242"], timeout_s=0.5)
    assert failed.value.exit_code == UNAVAILABLE_EXIT
    assert "the Slurm controller (slurmctld at head1(10.0.0.1):7817, from " in str(failed.value)


def test_a_hanging_scancel_is_unavailable_not_a_hang(
    fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jobs cancel` ran scancel without a time limit: a controller that took the connection
    and never answered hung the command for good."""
    fake(fake_bin, "scancel", "exec sleep 30")
    monkeypatch.setattr(scancel, "SCANCEL_TIMEOUT_S", 0.5)
    with pytest.raises(ClusterError) as failed:
        cancel.cancel_scheduler_job("slurm", "4242")
    assert failed.value.exit_code == UNAVAILABLE_EXIT
    said = str(failed.value)
    assert said.startswith("scancel: the Slurm controller (slurmctld at head1(10.0.0.1):7817")
    assert said.endswith("did not answer within 0.5 s"), said


def test_a_sites_jwt_reaches_sbatch(
    tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site with AuthAltTypes=auth/jwt: the user's SLURM_JWT was dropped from the
    environment of every submission with the enclosing job's SLURM_* variables, and sbatch
    failed with "Protocol authentication error"."""
    seen = tmp_path / "seen"
    fake(
        fake_bin,
        "sbatch",
        f'printf "%s|%s" "$SLURM_JWT" "$SLURM_MEM_PER_CPU" > {seen}\n'
        'echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2\n'
        "exit 1",
    )
    monkeypatch.setenv("SLURM_JWT", "eyJ.token")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "500")  # an enclosing job's: still left out
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs")
    with pytest.raises(ClusterError, match="sbatch refused job"):
        executor.submit(operator.add, 1, 2, name="x")
    assert seen.read_text() == "eyJ.token|"


SOCKET_TIMEOUT = (
    'echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv '
    'operation" >&2; exit 1'
)


@pytest.fixture
def pending_script(tmp_path: Path) -> Path:
    """A batch script for the real Slurm's debug partition (it is submitted to start in an
    hour, so it only pends)."""
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/sh\n#SBATCH --partition=debug\n#SBATCH --time=1\ntrue\n")
    return script


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_an_sbatch_that_timed_out_after_queueing_gives_the_queued_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pending_script: Path
) -> None:
    """sbatch's "Socket timed out" after the controller had queued the job was exit 69, "try
    again": a deploy or a monitor chain run again queued it twice. The real sbatch queues it
    here, then says what a controller slower than MessageTimeout makes it say."""
    real = shutil.which("sbatch")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir, "sbatch", f'{real} "$@" > /dev/null || exit 1\n{SOCKET_TIMEOUT}')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    name = f"pomlia-test-{uuid.uuid4().hex[:8]}"
    try:  # the job is queued whatever the code says: always cancelled
        begin = datetime.now(UTC) + timedelta(hours=1)
        job_id = submit_script(pending_script, name=name, begin=begin)
        assert [j.job_id for j in jobs_named(name)] == [job_id]
    finally:
        cancel_named(name)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_an_sbatch_that_timed_out_after_queueing_gives_the_job_that_ended_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pending_script: Path
) -> None:
    """A job queued by a timed-out sbatch that ended before the look-up (a server that failed
    at start, here one cancelled at once) is no longer in squeue's default listing: the
    error said "it was not queued", which was not true."""
    real = shutil.which("sbatch")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ended = (
        f'jid=$({real} --parsable "$@") || exit 1\n'
        f"echo $jid > {tmp_path / 'queued'}\n"
        "scancel $jid\n"
        'for _ in $(seq 100); do [ -z "$(squeue -h -j $jid 2>/dev/null)" ] && break; '
        "sleep 0.2; done\n"
        f"{SOCKET_TIMEOUT}"
    )
    fake(bin_dir, "sbatch", ended)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    name = f"pomlia-test-{uuid.uuid4().hex[:8]}"
    try:
        begin = datetime.now(UTC) + timedelta(hours=1)
        job_id = submit_script(pending_script, name=name, begin=begin)
    finally:
        cancel_named(name)
    assert job_id == (tmp_path / "queued").read_text().split(";")[0].strip()


def test_an_sbatch_that_timed_out_before_queueing_says_it_was_not(
    fake_bin: Path, pending_script: Path
) -> None:
    fake(fake_bin, "sbatch", SOCKET_TIMEOUT)
    fake(fake_bin, "squeue", "true")  # lists nothing of this user's
    with pytest.raises(ClusterError) as failed:
        submit_script(pending_script, name="chain")
    assert failed.value.exit_code == UNAVAILABLE_EXIT
    said = str(failed.value)
    assert said.startswith("sbatch: the Slurm controller (slurmctld at head1(10.0.0.1):7817")
    assert said.endswith(": it was not queued"), said


def test_an_sbatch_timeout_that_squeue_cannot_settle_says_how_to_check(
    fake_bin: Path, pending_script: Path
) -> None:
    fake(fake_bin, "sbatch", SOCKET_TIMEOUT)
    fake(fake_bin, "squeue", SOCKET_TIMEOUT.replace("sbatch", "squeue"))
    with pytest.raises(ClusterError) as failed:
        submit_script(pending_script, name="chain")
    assert failed.value.exit_code == UNAVAILABLE_EXIT
    said = str(failed.value)
    assert "the job may have been queued all the same" in said, said
    assert "`squeue --me --name chain --format '%i %k'` lists it with the comment " in said
    assert "\n" not in said


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_python_job_queued_despite_a_timed_out_sbatch_is_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial or training whose sbatch timed out after the controller had queued it: the
    command said "try again" (exit 69) and left that job queued, which could not run (its
    submission was never completed) and held a node for a minute before it failed."""
    real = shutil.which("sbatch")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir, "sbatch", f'{real} "$@" > {tmp_path / "queued"} || exit 1\n{SOCKET_TIMEOUT}')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    name = f"pomlia-test-{uuid.uuid4().hex[:8]}"
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs")
    try:
        with pytest.raises(ClusterError) as failed:
            executor.submit(operator.add, 1, 2, name=name)
        job_id = (tmp_path / "queued").read_text().split()[-1]

        def settled() -> str | None:
            shown = subprocess.run(
                ["scontrol", "-o", "show", "job", job_id],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            return None if "JobState=COMPLETING" in shown else shown

        # A job that had started is COMPLETING for a moment after its scancel, while slurmd
        # ends its processes, then CANCELLED (a local .ci/run saw the moment).
        state = wait_until(settled, 60, interval=0.5, what=f"job {job_id} to leave COMPLETING")
    finally:
        cancel_named(name)  # nothing left behind, whatever the code did
    assert failed.value.exit_code == UNAVAILABLE_EXIT
    assert str(failed.value).endswith(f"; Slurm had queued it all the same as job {job_id}: "
                                      "cancelled"), failed.value  # fmt: skip
    assert "JobState=CANCELLED" in state, state


def test_a_python_job_not_queued_by_a_timed_out_sbatch_says_so(
    tmp_path: Path, fake_bin: Path
) -> None:
    fake(fake_bin, "sbatch", SOCKET_TIMEOUT)
    fake(fake_bin, "squeue", "true")
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs")
    with pytest.raises(ClusterError) as failed:
        executor.submit(operator.add, 1, 2, name="x")
    assert failed.value.exit_code == UNAVAILABLE_EXIT
    assert str(failed.value).endswith("; squeue lists no job of its script: it was not queued")


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_timed_out_python_job_leaves_another_submission_of_its_name_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process submitted a job of the same name into the same folder while this
    one's sbatch timed out (a second run of one pipeline): its script there was just as new
    and its job was cancelled as this one's. Here the fake sbatch queues the other
    process's job (its own script, without this submission's comment) and times out."""
    real = shutil.which("sbatch")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    other = tmp_path / "jobs" / ".submission_file_other.sh"
    body = (
        "for last; do :; done\n"
        f'grep -v -- --comment "$last" > {other}\n'
        f"{real} --parsable --begin=now+3600 {other} > {tmp_path / 'other'} || exit 1\n"
        f"{SOCKET_TIMEOUT}"
    )
    fake(bin_dir, "sbatch", body)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    name = f"pomlia-test-{uuid.uuid4().hex[:8]}"
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs")
    try:
        with pytest.raises(ClusterError) as failed:
            executor.submit(operator.add, 1, 2, name=name)
        other_id = (tmp_path / "other").read_text().split(";")[0].strip()
        queued = [j.job_id for j in jobs_named(name)]
    finally:
        cancel_named(name)
    assert str(failed.value).endswith("it was not queued"), failed.value
    assert queued == [other_id]


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_driver_stopping_with_a_hanging_scancel_still_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A driver stopped by Ctrl-C or SIGTERM cancels its Slurm jobs with signals ignored;
    its scancel had no time limit, so a controller that took the connection and never
    answered hung the process for good, beyond another Ctrl-C."""
    real = shutil.which("scancel")
    assert real is not None
    name = f"pomlia-test-{uuid.uuid4().hex[:8]}"
    executor = Executor.from_profile("slurm-local", tmp_path / "jobs")
    handle = executor.submit(operator.add, 1, 2, name=name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir, "scancel", "exec sleep 120")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(scancel, "SCANCEL_TIMEOUT_S", 0.5)
    done: list[int] = []
    try:
        stopping = threading.Thread(target=lambda: done.append(cancel_own_jobs("test over")))
        stopping.start()
        stopping.join(60)
        assert not stopping.is_alive(), "cancel_own_jobs still waits for scancel"
    finally:
        subprocess.run([real, handle.job_id], check=False)
    assert done == [0]  # nothing was cancelled, and nothing claims it was
    said = capsys.readouterr().err
    # The process's other unfinished Slurm jobs (earlier tests') are in the same scancel.
    listed = re.search(r"could not cancel jobs ([\d, ]+): scancel: the Slurm controller", said)
    assert listed is not None and handle.job_id in listed[1].split(", "), said
    ids = listed[1].replace(",", "")
    assert f"did not answer within 0.5 s; they may still run (`scancel {ids}` cancels" in said


def test_squeue_ids_parses_the_listing_once_however_many_ids_are_asked(
    fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It parsed squeue's whole output once per asked id: a poll of thousands of jobs (a
    large array) did millions of parses."""
    ids = [str(5000 + i) for i in range(400)]
    fake(fake_bin, "squeue", "echo '" + "\n".join(ids[::2]) + "'")
    parses = 0
    parse = sacct_module.listed_ids

    def counted(out: str) -> set[str]:
        nonlocal parses
        parses += 1
        return parse(out)

    monkeypatch.setattr(sacct_module, "listed_ids", counted)
    assert squeue_ids(ids) == set(ids[::2])
    assert parses == 1
