"""Deployment rows that a killed ``pomlia deploy`` left: recorded, their directory never made.

``pomlia deploy`` makes the directory's staging folder (``files.staged_dir``: a temporary
name beside the directory, carrying host and pid) before it records the ``Deployment`` row,
and publishes the folder before it returns; a failure deletes the row again. Only a kill
(SIGKILL, a lost node) between the two leaves a row ``created`` without its directory, beside
the staging folder of a writer that is gone. Such a row never was a deployment: the next
``deploy`` of the model and a server asked to log under its id (``--deployment-id``) settle
it (:func:`settle_unfinished`) and say so.
"""

from __future__ import annotations

import glob
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from pomlia_hpc.files import TEMP_SUFFIX, temp_writer, writer_alive
from pomlia_hpc.progress import say as say_line
from pomlia_hpc.registry import Deployment, MonitorReport, Registry

#: The status of a settled row that monitor reports name (kept for them, not a deployment).
UNFINISHED = "unfinished"


def note(text: str) -> None:
    """Say ``text`` on stderr as a note: what was settled is no error, but worth a line."""
    say_line(f"note: {text}", sys.stderr)


def _never_finished(directory: Path) -> bool:
    """Whether deployment directory ``directory`` is missing and a writer of this host that is
    gone left its staging folder beside it (a writer at work, or another host's, is not)."""
    if directory.exists():
        return False
    host = socket.gethostname()
    # escaped: a name such as `v[1]` (--out) is no pattern that misses its own writer's folder
    staged = directory.parent.glob(f".{glob.escape(directory.name)}.*{TEMP_SUFFIX}*")
    writers = [(temp_writer(p.name, host), p) for p in staged]
    return bool(writers) and all(
        pid is not None and not writer_alive(pid, path) for pid, path in writers
    )


def settle_unfinished(
    registry: Registry,
    *,
    model_id: int | None = None,
    deployment_id: int | None = None,
    say: Callable[[str], None] = note,
) -> list[int]:
    """Settle the ``created`` deployment rows (of model ``model_id``, or the one row
    ``deployment_id``) whose directory a killed ``pomlia deploy`` never finished: deleted,
    or marked :data:`UNFINISHED` when a monitor report names them. Returns their ids;
    ``say`` is told of each (a note on stderr)."""
    q = select(Deployment).where(Deployment.status == "created", Deployment.job_id.is_(None))
    if model_id is not None:
        q = q.where(Deployment.model_id == model_id)
    if deployment_id is not None:
        q = q.where(Deployment.id == deployment_id)
    settled = []
    with registry.session() as s:
        for dep in s.scalars(q).all():
            directory = Path(dep.bundle_path).parent
            if not dep.bundle_path or not _never_finished(directory):
                continue
            named = select(MonitorReport.id).where(MonitorReport.deployment_id == dep.id)
            if s.scalars(named.limit(1)).first() is None:
                s.delete(dep)
            else:
                dep.status = UNFINISHED
            settled.append(dep.id)
            say(
                f"deployment {dep.id} was never finished (its `pomlia deploy` was killed "
                f"while writing {directory}): not a deployment, settled"
            )
    return settled
