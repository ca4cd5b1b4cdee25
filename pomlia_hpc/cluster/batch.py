"""Plain sbatch scripts by job name: submit one (with a begin time and a dependency), list the
jobs of a name, cancel them all. For jobs that are shell scripts rather than Python callables
(e.g. the self-resubmitting nightly monitor, :mod:`pomlia_hpc.monitor.schedule`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pomlia_hpc.cluster.reach import slurm_failure, timed_out
from pomlia_hpc.cluster.refusal import option_of
from pomlia_hpc.errors import ClusterError

TIMEOUT_S = 60


@dataclass(frozen=True)
class QueuedJob:
    """One job of ``squeue``: id, state (PENDING, RUNNING ...), begin time as Slurm prints it,
    and the batch script it runs."""

    job_id: str
    state: str
    begin: str
    command: str = ""  # the batch script it runs (squeue's %o)


#: What Slurm sets in a job only once the job was restarted (requeued). sbatch exports the
#: submitting environment (``--export=ALL``), so a job submitted from inside a requeued job (a
#: pipeline's driver job, ``jobs/automl.sbatch``, the monitor's chain) inherited it and counted
#: itself restarted from its first attempt: its log said "attempt 2", a driver in it took its
#: own first start for a requeue.
RESTART_VARS = ("SLURM_RESTART_COUNT",)


def submission_environ() -> dict[str, str]:
    """This process's environment as a job submitted from it should inherit it: without
    :data:`RESTART_VARS`."""
    return {k: v for k, v in os.environ.items() if k not in RESTART_VARS}


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
    cmd += [*extra, str(script)]
    return _run(cmd, cwd).strip().split(";")[0]  # "<id>;<cluster>" on federated clusters


def jobs_named(name: str, script: Path | None = None) -> list[QueuedJob]:
    """This user's queued or running jobs called ``name``; with ``script``, only those that
    run that batch script (a job name is the user's in every workspace: two workspaces'
    jobs of one name are told apart by their scripts' paths)."""
    import getpass

    out = _run(["squeue", "-h", "-u", getpass.getuser(), "-n", name, "-o", "%i|%T|%S|%o"])
    jobs = []
    for line in out.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4:
            jobs.append(QueuedJob(*parts))
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
        _run(["scancel", *ids])


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
