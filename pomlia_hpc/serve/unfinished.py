"""Deployment rows that a killed ``pomlia deploy`` left: recorded, their directory never made.

``pomlia deploy`` makes the directory's staging folder (``files.staged_dir``: a temporary
name beside the directory, carrying host and pid) before it records the ``Deployment`` row,
and publishes the folder before it returns; a failure deletes the row again. Only a kill
(SIGKILL, a lost node) between the two leaves a row ``created`` without its directory, beside
the staging folder of a writer that is gone (of this host: its process is gone; of another
host: the row is a day old, see :data:`FOREIGN_DEPLOY_GONE_S`). Such a row never was a
deployment: the next ``deploy`` of the model and a server asked to log under its id
(``--deployment-id``) settle it (:func:`settle_unfinished`) and say so.
"""

from __future__ import annotations

import glob
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from pomlia_hpc.files import TEMP_SUFFIX, temp_writer, writer_alive
from pomlia_hpc.progress import say as say_line
from pomlia_hpc.registry import Deployment, MonitorReport, Registry

#: The status of a settled row that monitor reports name (kept for them, not a deployment).
UNFINISHED = "unfinished"

#: Seconds after which a row whose staging folder is another host's counts as never finished:
#: no process of this host can tell whether that writer is gone, and a deploy takes minutes.
FOREIGN_DEPLOY_GONE_S = 24 * 3600.0


def note(text: str) -> None:
    """Say ``text`` on stderr as a note: what was settled is no error, but worth a line."""
    say_line(f"note: {text}", sys.stderr)


def _never_finished(directory: Path, age_s: float) -> bool:
    """Whether deployment directory ``directory``, recorded ``age_s`` seconds ago, is missing
    and a writer that is gone left its staging folder beside it: one of this host whose
    process is gone, or another host's once the row is :data:`FOREIGN_DEPLOY_GONE_S` old."""
    if directory.exists():
        return False
    host = socket.gethostname()
    # escaped: a name such as `v[1]` (--out) is no pattern that misses its own writer's folder
    staged = list(directory.parent.glob(f".{glob.escape(directory.name)}.*{TEMP_SUFFIX}*"))
    writers = [(temp_writer(p.name, host), p) for p in staged]
    foreign_gone = age_s >= FOREIGN_DEPLOY_GONE_S
    return bool(writers) and all(
        foreign_gone if pid is None else not writer_alive(pid, path) for pid, path in writers
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
            age_s = (datetime.now(UTC) - dep.created_at).total_seconds()
            if not dep.bundle_path or not _never_finished(directory, age_s):
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
