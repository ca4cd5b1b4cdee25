"""Waiting for many jobs at once: one ``sacct`` call per poll for all Slurm jobs of a batch."""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import Any

from sqlalchemy import select

from pomlia_hpc.cluster.backoff import Backoff
from pomlia_hpc.cluster.handle import JobFailedError, JobHandle
from pomlia_hpc.cluster.records import refresh_slurm_jobs, sacct_states
from pomlia_hpc.cluster.states import ended_for_good, settle_slurm_rows
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Job, Registry


def wait_all(
    handles: Sequence[JobHandle], *, poll_s: float = 1.0, registry: Registry | None = None
) -> list[Any]:
    """Wait for all ``handles``; return results in order (exceptions in place of failures).

    A job that never ran (its submission failed, or it was cancelled before submission) gives
    the :class:`ClusterError` that says so.

    On Slurm each poll refreshes every job's registry row with one ``sacct`` call. Polls come
    every ``poll_s`` seconds; after :data:`~pomlia_hpc.cluster.backoff.PATIENCE_S` seconds in
    which no job changed state they come less often, up to every
    :data:`~pomlia_hpc.cluster.backoff.CEILING_S` seconds, and every ``poll_s`` again after a
    change (a night-long wait for a large array must not load slurmdbd with a query a second).
    """
    reg = registry or (handles[0].registry if handles else None)
    pace = Backoff(poll_s)  # a long wait asks sacct less often while nothing changes
    while not all(done := [h.done() for h in handles]):
        waiting = [h for h, d in zip(handles, done, strict=True) if h.submitted and not d]
        states: Hashable = None
        if waiting and handles[0].backend == "slurm":
            states = _poll_slurm(waiting, reg)
        time.sleep(pace.next((tuple(done), states)))
    settle(handles, reg)  # one wait for all, not one per result() below
    out: list[Any] = []
    for h in handles:
        if h.submission_error is not None:
            out.append(ClusterError(f"job never ran: {h.submission_error}"))
            continue
        try:
            out.append(h.result())
        except JobFailedError as exc:
            out.append(exc)
    return out


def settle(handles: Sequence[JobHandle], registry: Registry | None = None) -> None:
    """Record Slurm's end of every ended job of ``handles`` with one ``sacct`` call (waiting
    up to :data:`~pomlia_hpc.cluster.states.SLURM_END_WAIT_S` seconds for slurmdbd), before
    their results are collected: ``result()`` then asks no more for a job that completed.
    Nothing off Slurm or without a registry."""
    reg = registry or (handles[0].registry if handles else None)
    recorded = [h.record_id for h in handles if h.submitted and h.record_id is not None]
    if reg is not None and recorded and handles[0].backend == "slurm":
        settle_slurm_rows(reg, recorded)


def _poll_slurm(handles: Sequence[JobHandle], reg: Registry | None) -> Hashable:
    """One ``sacct`` for all ``handles``: refresh their rows, and give up on jobs that ended in
    a state submitit keeps waiting on; returns their states (None when ``sacct`` failed). A
    failing ``sacct`` (slurmdbd restarting, a timeout) says nothing about the jobs: this poll
    changes nothing and the next one asks again."""
    try:
        return _poll_slurm_once(handles, reg)
    except ClusterError:
        return None


def _poll_slurm_once(handles: Sequence[JobHandle], reg: Registry | None) -> Hashable:
    if reg is not None and all(h.record_id is not None for h in handles):
        ids = [h.record_id for h in handles if h.record_id is not None]
        refresh_slurm_jobs(reg, ids)
        with reg.session() as s:
            rows = {
                r.id: (r.state, r.ended_at) for r in s.scalars(select(Job).where(Job.id.in_(ids)))
            }
        for h in handles:
            state, ended = rows.get(h.record_id or -1, ("UNKNOWN", None))
            if ended_for_good(state, ended):
                h.given_up_state = state
        return tuple(sorted((rid, state) for rid, (state, _) in rows.items()))
    states = sacct_states(h.job_id for h in handles)
    for h in handles:
        st = states.get(h.job_id)
        if st is not None and not st.may_requeue and ended_for_good(st.state, st.ended_at):
            h.given_up_state = st.state
    return tuple(sorted((jid, st.state) for jid, st in states.items()))
