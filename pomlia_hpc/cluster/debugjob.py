"""A ``debug`` job (submitit's ``DebugExecutor``): run in this process when it is first waited
for, with a failure that is the job's outcome as on the other backends.

submitit's own ``DebugJob`` raises the job's exception out of ``done()`` and ``result()``
(so the registry row stayed PENDING, and the next ``fingerprint train`` of the name was
refused as "being trained by job N (PENDING)"), asks ``pdb`` to debug it, which printed
``(Pdb)`` into a command's output when nobody sat at a terminal, and runs the job again on
every later look (it only keeps a result). Here it runs once: a result is kept, a failure
becomes submitit's ``UncompletedJobError`` with the traceback, as a failed local job's, so
the caller records the job FAILED with its exception line. The post-mortem debugger, what
the ``debug`` profile is for, still opens at an interactive terminal, unless
``PYTHONBREAKPOINT=0`` (Python's switch for ``breakpoint()``) turns it off.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

from submitit.core.utils import UncompletedJobError

__all__ = ["debug_result", "debug_state", "run_debug_job"]

#: Attribute of a debug job that holds its failure's traceback once it ran and raised.
_FAILURE = "pomlia_failure"


def run_debug_job(job: Any) -> None:
    """Run the debug job ``job`` in this process unless it ran already; an exception it
    raises (not a ``KeyboardInterrupt``: Ctrl-C stops the command) is kept as its outcome."""
    submission = job.submission()
    if submission.done() or getattr(job, _FAILURE, None) is not None or job.cancelled:
        return
    saved = dict(os.environ)
    os.environ.clear()  # the job's environment: the submitter's at submission, and its id
    os.environ.update(job.environ)
    root = logging.getLogger("")
    job.paths.stdout.parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(job.paths.stdout), logging.FileHandler(job.paths.stderr)]
    handlers[1].setLevel(logging.WARNING)
    for handler in handlers:
        root.addHandler(handler)
    try:
        submission.result()
    except Exception as exc:
        setattr(job, _FAILURE, "".join(traceback.format_exception(exc)))
        if _at_terminal():
            import pdb

            pdb.post_mortem(exc.__traceback__)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def debug_result(job: Any) -> Any:
    """The result of the debug job ``job`` (run now if it has not run); its failure raises
    ``UncompletedJobError`` with the job's traceback, as a failed local job's result does."""
    run_debug_job(job)
    if job.cancelled:
        raise UncompletedJobError(f"Job {job.job_id} was cancelled.")
    failure = getattr(job, _FAILURE, None)
    if failure is not None:
        raise UncompletedJobError(
            f"Job {job.job_id} failed during processing with trace:\n{failure}"
        )
    return job.submission().result()


def debug_state(job: Any) -> str:
    """The state of the debug job ``job`` without running it: ``COMPLETED`` or ``FAILED``
    once it ran, ``CANCELLED``, else ``PENDING`` (it runs when waited for)."""
    if job.submission().done():
        return "COMPLETED"
    if getattr(job, _FAILURE, None) is not None:
        return "FAILED"
    return "CANCELLED" if job.cancelled else "PENDING"


def _at_terminal() -> bool:
    """Whether a person can answer the debugger: stdin and stdout are terminals, and
    ``PYTHONBREAKPOINT`` is not ``0``."""
    if os.environ.get("PYTHONBREAKPOINT") == "0":
        return False
    return all(stream is not None and stream.isatty() for stream in (sys.stdin, sys.stdout))
