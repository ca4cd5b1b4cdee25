"""Entry point of the local backend's job controller (see
:mod:`pomlia_hpc.cluster.submitit_controller`): ``python -m pomlia_hpc.cluster.submitit_local
FOLDER`` runs submitit's controller of the job in FOLDER and ends with status 130, without a
traceback, when it is interrupted (``pomlia jobs cancel``, Ctrl-C).

An interrupted controller leaves a marker beside the job's files (:func:`cancel_marker`) that
holds the cause: a Ctrl-C in the terminal reaches the job's processes directly, and the
submitting command is gone before it could record anything, so the marker is what tells
"cancelled by SIGINT" from "ended without a result" (``cluster.records.refresh_local_jobs``,
``JobHandle.result``). The marker is named by the job's process (its pid and its start, which
the submitter records with the job): a later job given the same pid is another process, and
neither takes the other's marker. Imports nothing heavy: it starts with every local job.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from pomlia_hpc.processes import process_start_id

#: The cause recorded for a job (or driver) stopped by SIGINT.
SIGINT_CAUSE = "cancelled (SIGINT: `pomlia jobs cancel` or Ctrl-C)"
#: ``Job.meta`` key of a local job: the start id of its process (:func:`process_start_id`).
CONTROLLER_META = "controller"


def cancel_marker(folder: str | Path, job_id: str, controller: str | None = None) -> Path:
    """Where the controller of local job ``job_id`` (its pid) in ``folder`` notes that it was
    interrupted, and why (one line of text). ``controller``: the start id of the job's process
    (:func:`~pomlia_hpc.processes.process_start_id`), so that a process that reuses the pid
    has another marker; None (no ``/proc``, a job recorded without it): the pid's marker, which
    the controller of a later job with the same pid deletes when it starts."""
    if controller is None:
        return Path(folder) / f"{job_id}_cancelled.txt"
    return Path(folder) / f"{job_id}_{controller.replace(':', '_')}_cancelled.txt"


def main(argv: Sequence[str]) -> int:
    """Run the controller of the job in ``argv[1]``; 130 when interrupted (cancelled)."""
    from submitit.local.local import Controller

    if len(argv) != 2:
        print(
            "usage: python -m pomlia_hpc.cluster.submitit_local <submitit folder>", file=sys.stderr
        )
        return 2
    controller = Controller(Path(argv[1]))
    # The job's process (this one, or the shell that runs it): what the submitter recorded.
    me = process_start_id(int(controller.pid))
    # Job ids are pids, and pids are reused: a pid's marker left by an earlier job with this
    # id would have this one recorded CANCELLED whatever its end.
    with contextlib.suppress(OSError):
        cancel_marker(argv[1], controller.pid).unlink(missing_ok=True)
    try:
        controller.run()  # its own `finally` stops the tasks
    except KeyboardInterrupt:
        # Written before the exit: whoever sees the process gone then finds the cause. A
        # plain write (no rename): its presence is what counts, an empty file still says it.
        with contextlib.suppress(OSError):
            cancel_marker(argv[1], controller.pid, me).write_text(SIGINT_CAUSE + "\n")
        return 130  # cancelled: the submitter records and reports it
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
