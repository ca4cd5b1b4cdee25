"""Plain sbatch scripts by job name: submit one (with a begin time and a dependency), list the
jobs of a name, cancel them all. For jobs that are shell scripts rather than Python callables
(e.g. the self-resubmitting nightly monitor, :mod:`pomlia_hpc.monitor.schedule`).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pomlia_hpc.cluster.jobenv import missing_job_defaults
from pomlia_hpc.cluster.reach import slurm_failure, timed_out
from pomlia_hpc.cluster.refusal import option_of
from pomlia_hpc.cluster.scancel import scancel_or_fail
from pomlia_hpc.errors import ClusterError, SlurmUnavailableError
from pomlia_hpc.progress import say

TIMEOUT_S = 60

#: Words (lower case) of an sbatch that failed after the controller had taken its request: its
#: answer did not come back within ``MessageTimeout``, yet the job may have been queued.
MAYBE_QUEUED_WORDS = ("socket timed out", "zero bytes were transmitted or received")

#: The start of the ``--comment`` that marks each submission of :func:`submit_script` with a
#: token of its own, by which a job queued despite a failed sbatch is found.
TOKEN_PREFIX = "pomlia-submission:"


@dataclass(frozen=True)
class QueuedJob:
    """One job of ``squeue``: id, state (PENDING, RUNNING ...), begin time as Slurm prints it,
    the batch script it runs and its comment."""

    job_id: str
    state: str
    begin: str
    command: str = ""  # the batch script it runs (squeue's %o)
    comment: str = ""  # squeue's %k: a submission's token (:func:`submission_token`)


#: What Slurm sets in a job only once the job was restarted (requeued). sbatch exports the
#: submitting environment (``--export=ALL``), so a job submitted from inside a requeued job (a
#: pipeline's driver job, ``jobs/automl.sbatch``, the monitor's chain) inherited it and counted
#: itself restarted from its first attempt: its log said "attempt 2", a driver in it took its
#: own first start for a requeue.
RESTART_VARS = ("SLURM_RESTART_COUNT",)


def submission_environ() -> dict[str, str]:
    """This process's environment as a job submitted from it should inherit it: without
    :data:`RESTART_VARS`, with :data:`~pomlia_hpc.cluster.jobenv.JOB_ENV_DEFAULTS` where it
    sets none."""
    kept = {k: v for k, v in os.environ.items() if k not in RESTART_VARS}
    return {**kept, **missing_job_defaults(kept)}


def _run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        raise ClusterError(f"{cmd[0]} not found: run this on a Slurm login node")
    env = submission_environ() if cmd[0] == "sbatch" else None
    try:
        out = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT_S,
            cwd=cwd,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise timed_out(cmd[0], TIMEOUT_S) from exc
    if out.returncode != 0:
        text = " ".join((out.stderr.strip() or out.stdout.strip()).split())
        # name the option behind a refusal, as for every other submission
        check = f" (check {option_of(text)})" if cmd[0] == "sbatch" else ""
        raise slurm_failure(cmd[0], text, f"{cmd[0]} refused", check)
    return out.stdout


def slurm_time(t: datetime) -> str:
    """``t`` as sbatch's ``--begin`` wants it: local wall time ``YYYY-MM-DDTHH:MM:SS``
    (Slurm reads it in the controller's time zone)."""
    return t.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


def submit_script(
    script: Path,
    *,
    name: str,
    begin: datetime | None = None,
    singleton: bool = True,
    env: Mapping[str, str] | None = None,
    output: Path | None = None,
    extra: Sequence[str] = (),
    cwd: Path | None = None,
) -> str:
    """``sbatch`` ``script`` as job ``name``; returns the job id. The job gets the caller's
    environment (``--export=ALL``, whatever the site's ``SBATCH_EXPORT``) with ``env`` on
    top; ``singleton`` adds ``--dependency=singleton``; ``cwd`` is where
    sbatch runs (relative ``#SBATCH --output`` paths are relative to it)."""
    cmd = ["sbatch", "--parsable", f"--job-name={name}"]
    if begin is not None:
        cmd.append(f"--begin={slurm_time(begin)}")
    if singleton:
        cmd.append("--dependency=singleton")
    # Always ALL, on the command line: a site's SBATCH_EXPORT=NONE would override the
    # script's own lines, and the job needs the submitting environment (see cluster.submitenv).
    export = "--export=ALL"
    if env:
        bad = [k for k, v in env.items() if "," in v or "," in k]
        if bad:
            raise ClusterError(f"environment values for sbatch must not contain ',': {bad}")
        export += "," + ",".join(f"{k}={v}" for k, v in env.items())
    cmd.append(export)
    if output is not None:
        cmd.append(f"--output={output}")
    token = submission_token()
    cmd += [f"--comment={token}", *extra, str(script)]
    try:
        out = _run(cmd, cwd)
    except SlurmUnavailableError as exc:
        if not maybe_queued(exc):
            raise
        return queued_anyway(name, token, exc)
    return out.strip().split(";")[0]  # "<id>;<cluster>" on federated clusters


def submission_token() -> str:
    """A new ``--comment`` for one submission (:data:`TOKEN_PREFIX` and 16 random hex digits),
    by which the job is found if its sbatch fails after the controller queued it."""
    return f"{TOKEN_PREFIX}{uuid.uuid4().hex[:16]}"


def maybe_queued(exc: SlurmUnavailableError) -> bool:
    """Whether sbatch's failure ``exc`` leaves open that the job was queued: the controller
    took the request and did not answer in time (:data:`MAYBE_QUEUED_WORDS`, or no answer
    within :data:`TIMEOUT_S`), unlike a connection that was never made."""
    said = str(exc).lower()
    return "did not answer within" in said or any(w in said for w in MAYBE_QUEUED_WORDS)


def queued_anyway(name: str, token: str, exc: SlurmUnavailableError) -> str:
    """After sbatch of job ``name`` failed with ``exc`` (:func:`maybe_queued`), the id of the
    job Slurm queued all the same, found by its submission comment ``token``; a note on
    stderr says so. Raises ``exc``'s kind of error (exit 69) saying whether the job was
    queued, so that running the command again cannot submit it twice: "not queued" when
    ``squeue`` lists no job with the token, "may have been queued" and how to check when
    ``squeue`` cannot answer either. Jobs in every state are looked at (``--states=all``): a
    job that was queued and has ended since (a server that failed at start, within the
    minute sbatch waited) was not there, and "not queued" was not true."""
    try:
        query = ["squeue", "-h", "--states=all", "-u", getpass.getuser(), "-n", name]
        out = _run([*query, "-o", "%i|%k"])
    except ClusterError as again:
        raise SlurmUnavailableError(
            f"{exc}; the job may have been queued all the same, and squeue could not tell "
            f"({again}): `squeue --me --name {name} --format '%i %k'` lists it with the "
            f"comment {token} if it was (cancel it, or keep it and do not submit again)"
        ) from exc
    rows = (line.strip().partition("|") for line in out.splitlines())
    found = [jid for jid, _, comment in rows if comment == token]
    if found:
        say(
            f"note: sbatch did not get the controller's answer in time, but Slurm had queued "
            f"job {name} as {found[0]} (found by its submission comment {token})",
            sys.stderr,
        )
        return found[0]
    raise SlurmUnavailableError(
        f"{exc}; squeue lists no job with its submission comment {token}: it was not queued"
    ) from exc


def jobs_named(name: str, script: Path | None = None) -> list[QueuedJob]:
    """This user's queued or running jobs called ``name``; with ``script``, only those that
    run that batch script (a job name is the user's in every workspace: two workspaces'
    jobs of one name are told apart by their scripts' paths)."""
    import getpass

    out = _run(["squeue", "-h", "-u", getpass.getuser(), "-n", name, "-o", "%i|%T|%S|%k|%o"])
    jobs = []
    for line in out.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) == 5:
            job_id, state, begin, comment, command = parts
            jobs.append(
                QueuedJob(job_id, state, begin, command, "" if comment == "(null)" else comment)
            )
    if script is not None:
        jobs = [j for j in jobs if j.command == str(script)]
    return jobs


def cancel_named(name: str, script: Path | None = None) -> list[str]:
    """Cancel this user's jobs called ``name`` (with ``script``: those that run it, as
    :func:`jobs_named`); returns the ids that were queued."""
    ids = [j.job_id for j in jobs_named(name, script)]
    cancel_ids(ids)
    return ids


def cancel_ids(ids: Sequence[str]) -> None:
    """Cancel these Slurm jobs by id (one ``scancel``; an id that has ended is no error)."""
    if ids:
        scancel_or_fail(ids, "scancel refused")


def scrontab_unavailable() -> str | None:
    """Why ``scrontab`` cannot be used on this cluster, in words (no ``scrontab`` command;
    slurm.conf's ``ScronParameters`` without ``enable``, which makes ``scrontab`` refuse every
    user), or None when it can be or ``scontrol`` does not say (then the site may allow it)."""
    why = []
    if shutil.which("scrontab") is None:
        why.append("no scrontab command")
    try:
        conf = _run(["scontrol", "show", "config"])
    except ClusterError:
        conf = ""
    for line in conf.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ScronParameters" and "enable" not in value.strip().split(","):
            why.append(f"slurm.conf's ScronParameters is {value.strip()}, without 'enable'")
    return "; ".join(why) or None
