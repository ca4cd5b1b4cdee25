"""A job submitit's sbatch failed to submit that Slurm queued all the same.

submitit writes each job's batch script as ``<folder>/.submission_file_<uuid>.sh`` and, once
sbatch has answered with the job's id, moves it next to the job's other files (leaving a
link). When sbatch fails after the controller took the request (``Socket timed out on
send/recv operation``: :func:`~pomlia_hpc.cluster.batch.maybe_queued`) the job may have been
queued, yet submitit never completed its submission: such a job waits a minute for a pickle
that never comes and fails, and the command's exit 69 ("run it again") would queue its work
once more beside it. :func:`unsubmitted_withdrawn` finds that job by its script (a file the
failed submission left behind, still in place) and its submission comment (a token of its own,
as :func:`~pomlia_hpc.cluster.batch.submit_script` gives its jobs) and cancels it, and its
error says which of "queued and cancelled", "not queued" and "may have been queued" holds.
The comment keeps it to this submission: another process submitting a job of the same name
into the same folder at that moment (a second run of one pipeline) has a script there that is
just as new, and its job was cancelled too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pomlia_hpc.cluster.batch import cancel_ids, jobs_named, maybe_queued, submission_token
from pomlia_hpc.errors import ClusterError, SlurmUnavailableError

#: How submitit names a batch script before its job has an id.
SCRIPT_GLOB = ".submission_file_*.sh"


def pending_scripts(folder: Path) -> set[Path]:
    """The batch scripts in ``folder`` whose submission was not completed (plain files, not
    the links that a completed one leaves)."""
    return {p for p in folder.glob(SCRIPT_GLOB) if p.is_file() and not p.is_symlink()}


def withdrawal(name: str, scripts: set[Path], token: str) -> str:
    """What became of job ``name`` whose sbatch failed, in words to append to the error: the
    jobs called ``name`` whose script is one of ``scripts`` and whose comment is ``token``
    are cancelled."""
    try:
        jobs = jobs_named(name)
        ids = [j.job_id for j in jobs if Path(j.command) in scripts and j.comment == token]
    except ClusterError as exc:
        return (
            f"; the job may have been queued all the same, and squeue could not tell ({exc}): "
            f"`squeue --me --name {name} --format '%i %o'` lists it with a script "
            f"{next(iter(scripts)).parent}/{SCRIPT_GLOB} if so, which cannot run (it fails "
            "a minute after it starts): cancel it"
        )
    if not ids:
        return "; squeue lists no job of its script: it was not queued"
    try:
        cancel_ids(ids)
    except ClusterError as exc:
        return (
            f"; Slurm had queued it all the same as job {', '.join(ids)}, which cannot run and "
            f"could not be cancelled ({exc}): cancel it (`scancel {' '.join(ids)}`)"
        )
    return f"; Slurm had queued it all the same as job {', '.join(ids)}: cancelled"


@contextlib.contextmanager
def unsubmitted_withdrawn(folder: Path, name: str, executor: Any) -> Iterator[None]:
    """Around a submission of job ``name`` by submitit ``executor`` (an ``AutoExecutor``, given
    a submission comment of its own here) into ``folder``: when it fails with a controller
    that may have queued the job all the same (exit 69), cancel the job if it was queued and
    say so in the error (:func:`withdrawal`)."""
    token = submission_token()
    executor.update_parameters(slurm_comment=token)  # ignored by the other backends
    before = pending_scripts(folder) if folder.is_dir() else set()
    try:
        yield
    except SlurmUnavailableError as exc:
        if not maybe_queued(exc):
            raise
        scripts = pending_scripts(folder) - before
        if not scripts:  # submitit never reached sbatch
            raise
        raise SlurmUnavailableError(
            f"{exc}{withdrawal(name, scripts, token)}", hint=exc.hint
        ) from exc
