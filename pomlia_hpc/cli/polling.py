"""Job states for a listing (``jobs list``, ``jobs show``, ``status``, ``pipeline status``
and ``pipeline run --wait``), without hanging on a slow Slurm.

A listing refreshes the recorded states with one ``sacct`` call first. ``sacct`` that does not
answer (slurmdbd busy or down) used to hold the listing for 60 s in silence, then print
Python's ``TimeoutExpired`` text above states that were out of date. Now a line on stderr says
what the listing waits for once it waits :data:`STATUS_AFTER_S` seconds, the wait ends after
the workspace's ``cluster.list_sacct_timeout_s`` (15 s by default), and the listing says in
words that its states are the last recorded ones, and as of when.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from rich.console import Console
from rich.markup import escape

from pomlia_hpc.cli.app import STATE, err_console
from pomlia_hpc.cli.tables import when
from pomlia_hpc.cluster.records import (
    POLLED_META,
    cancel_unconfirmed,
    polled_still,
    recorded_as_of,
    refresh_jobs_within,
    utcnow,
)
from pomlia_hpc.registry import Job, Registry

#: Seconds a listing waits for the scheduler before it says so on stderr.
STATUS_AFTER_S = 2.0


@contextmanager
def waiting_said(timeout_s: float) -> Iterator[None]:
    """Say on stderr, once the block has run :data:`STATUS_AFTER_S` seconds, that it waits for
    ``sacct`` (at most ``timeout_s`` seconds); silent when it ends sooner."""

    def waiting() -> None:
        err_console.print(
            f"waiting for Slurm's accounting (sacct) to answer, at most {timeout_s:g} s ...",
            highlight=False,
        )

    timer = threading.Timer(STATUS_AFTER_S, waiting)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()  # its line, if it is being printed, comes before what follows


def poll_start() -> datetime:
    """The time a listing's poll starts: rows Slurm confirmed from then on (their
    :data:`~pomlia_hpc.cluster.records.POLLED_META`) are current whatever else the poll could
    not ask."""
    return utcnow()


def refresh_for_listing(registry: Registry, job_ids: Sequence[int] | None = None) -> str | None:
    """Refresh the job rows a listing shows (all unfinished ones, or ``job_ids``) from the
    scheduler, waiting at most the workspace's ``list_sacct_timeout_s`` seconds for ``sacct``
    and the ``squeue`` after it together (one limit). Returns None when the states are
    current, else why they are not (the error in words), for :func:`say_unsure`."""
    timeout_s = STATE.workspace.list_sacct_timeout_s
    with waiting_said(timeout_s):
        return refresh_jobs_within(registry, job_ids, timeout_s=timeout_s, lost=True)


def unsure_states(rows: Sequence[Job], asked: datetime | None = None) -> list[Job]:
    """The rows whose shown state may be out of date after a failed poll: the Slurm ones the
    poll would have asked about (:func:`~pomlia_hpc.cluster.records.polled_still`: unfinished,
    NODE_FAIL or PREEMPTED within their requeue window, CANCELLED on pomlia's word only) that
    Slurm did not confirm since ``asked`` (:func:`poll_start`; a poll whose ``sacct``
    answered and whose ``squeue`` did not confirmed most rows, and every one was marked).
    Another ended job's state does not change; local jobs were polled here."""
    now = utcnow()

    def confirmed(row: Job) -> bool:  # by this poll; a cancel on pomlia's word is Slurm's never
        polled = (row.meta or {}).get(POLLED_META)
        if asked is None or not isinstance(polled, str) or cancel_unconfirmed(row, now):
            return False
        return recorded_as_of(row) >= asked

    return [r for r in rows if polled_still(r, now) and not confirmed(r)]


def say_unsure(
    console: Console, problem: str, rows: Sequence[Job], asked: datetime | None = None
) -> None:
    """Say on ``console`` that the scheduler could not be asked (``problem``) and that the
    states of ``rows`` are the last recorded ones, as of the oldest confirmation among those
    :func:`unsure_states` picks (table times, UTC)."""
    unsure = unsure_states(rows, asked)
    say_unsure_as_of(console, problem, min((recorded_as_of(r) for r in unsure), default=None))


def say_unsure_as_of(console: Console, problem: str, as_of: datetime | None) -> None:
    """Say on ``console`` that the scheduler could not be asked (``problem``) and that the
    states shown are the last recorded ones, confirmed by Slurm at ``as_of`` (UTC; None: no
    state shown depends on it, so nothing is marked)."""
    if as_of is None:
        text = f"{problem}; no state shown depends on what it did not answer"
    else:
        text = f"{problem}; the states shown are the last recorded ones, as of "
        text += f"{when(as_of, seconds=True)} (marked ?)"
    console.print(f"[yellow]{escape(text)}[/]", highlight=False)
