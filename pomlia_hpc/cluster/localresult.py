"""What a local job left in its folder once its process is gone: the outcome its result
pickle names, or the cause its controller noted when it was interrupted. Read by the poll of
local jobs (:func:`pomlia_hpc.cluster.records.refresh_local_jobs`) and by a handle collecting
or adopting one."""

from __future__ import annotations

import pickletools
from pathlib import Path

from pomlia_hpc.cluster.submitit_local import cancel_marker


def local_result_outcome(folder: str, scheduler_id: str) -> str | None:
    """``"success"`` or ``"error"`` from a local job's result pickle; None if there is none.

    Reads only the pickle's first string (submitit stores ``(outcome, value)``): the value is
    never unpickled, so nothing of the job's code or data is loaded."""
    path = Path(folder) / f"{scheduler_id}_0_result.pkl"
    try:
        with path.open("rb") as f:
            for _op, arg, _pos in pickletools.genops(f):
                if isinstance(arg, str):
                    return arg
    except (OSError, ValueError):
        return None
    return None


def local_cancel_cause(folder: str, scheduler_id: str, controller: str | None = None) -> str | None:
    """The cause a local job's controller noted when it was interrupted (SIGINT: Ctrl-C in
    the terminal, ``pomlia jobs cancel``), or None if it was not. ``controller``: the start id
    of the job's process, as recorded with the job (``Job.meta``): the marker of another
    process with the same pid is not this job's."""
    try:
        text = cancel_marker(folder, scheduler_id, controller).read_text()
    except OSError:
        return None
    return text.strip() or "cancelled (SIGINT)"
