"""Submissions the scheduler refuses, and requests it will never start, as one line each.

``sbatch`` refuses a request it can tell is wrong (a GPU on a cluster without ``gres``, more
memory than any node has, an unknown partition): submitit raises ``FailedJobError`` with
sbatch's stderr. :func:`sbatch_refusals` turns it into a :class:`ClusterError` that names the
profile option behind the refusal and sbatch's own message, so every command that submits
(fingerprint train/extract, AutoML trials, pipeline stages, the monitor, deploy) stops with one
line instead of a traceback.

Some requests ``sbatch`` accepts but Slurm will never start: the job pends with a reason that
no amount of waiting clears (:data:`PERMANENT_REASONS`). :func:`never_starts` says which.
"""

from __future__ import annotations

import contextlib
import getpass
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from pomlia_hpc.cluster.backoff import Backoff
from pomlia_hpc.cluster.failures import SIGNAL_EARLY_S
from pomlia_hpc.cluster.reach import out_of_reach, slurm_failure, timed_out, unreachable_error
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.progress import say

if TYPE_CHECKING:
    from pomlia_hpc.config import ClusterProfile


class PendingJob(Protocol):
    """What :func:`watch_pending` needs of a job handle (the executor's ``JobHandle``; named
    by its shape so that this module, which the registry-query commands load, does not
    import the executor and with it torch)."""

    pending_reason: str | None
    given_up_state: str | None
    resources: ClusterProfile

    @property
    def scheduler_id(self) -> str | None: ...

    @property
    def name(self) -> str: ...

    def cancel(self, cause: str = ...) -> None: ...


#: Words of sbatch's message → the profile option (and command-line flag) that set it.
_OPTIONS: tuple[tuple[str, str], ...] = (
    ("gres", "gpus_per_node (--gpus)"),
    ("gpu", "gpus_per_node (--gpus)"),
    ("memory", "mem_gb"),
    ("partition", "partition"),
    ("time limit", "time_min"),
    ("qos", "qos"),
    ("account", "account"),
    ("cpu", "cpus_per_task (--cpus)"),
    ("node configuration", "cpus_per_task, mem_gb or gpus_per_node"),
)

#: Pending reasons that Slurm documents as never clearing by themselves (squeue(1), JOB
#: REASON CODES): the request exceeds a per-job limit of the partition, QOS or association,
#: or names what does not exist. Such a job pends forever. Not here: ``ReqNodeNotAvail``
#: (nodes down, drained or reserved, e.g. ``Reserved for maintenance``) and
#: ``PartitionNodeLimit`` (also given while the partition's nodes are down or drained): both
#: clear when the nodes come back.
PERMANENT_REASONS = frozenset(
    {
        "PartitionConfig",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxGRESPerJob",
        "QOSMaxMemoryPerJob",
        "QOSMaxNodePerJobLimit",
        "QOSMaxWallDurationPerJobLimit",
        "AssocMaxCpuPerJobLimit",
        "AssocMaxMemPerJob",
        "AssocMaxNodePerJobLimit",
        "AssocMaxWallDurationPerJobLimit",
        "DependencyNeverSatisfied",
    }
)


def request_text(profile: ClusterProfile) -> str:
    """The request of a job of ``profile`` in words: ``1 CPU, 0 GPU, 1 GB, 30 min, partition
    debug`` (memory in GB, time in minutes)."""
    parts = [
        f"{profile.cpus_per_task} CPU",
        f"{profile.gpus_per_node} GPU",
        f"{profile.mem_gb:g} GB",
        f"{profile.time_min} min",
    ]
    if profile.partition:
        parts.append(f"partition {profile.partition}")
    if profile.qos:
        parts.append(f"qos {profile.qos}")
    return ", ".join(parts)


def option_of(message: str) -> str:
    """The profile option that sbatch's ``message`` is about, or a list of the likely ones."""
    low = message.lower()
    for word, option in _OPTIONS:
        if word in low:
            return option
    return "the job's resources"


def refusal_error(profile: ClusterProfile, message: str, name: str) -> ClusterError:
    """The one-line error for sbatch refusing job ``name`` with ``message`` (its stderr); a
    controller that did not answer is not a refusal (:mod:`pomlia_hpc.cluster.reach`)."""
    text = " ".join(message.split()) or "no message"
    if out_of_reach(text):
        return unreachable_error("sbatch", message)
    return ClusterError(
        f"sbatch refused job '{name}' ({request_text(profile)}): check {option_of(text)}: {text}",
        hint="change the option (or the cluster profile) and run the command again",
    )


@contextlib.contextmanager
def sbatch_refusals(profile: ClusterProfile, name: str) -> Iterator[None]:
    """Turn submitit's ``FailedJobError`` (sbatch refused the job) inside the block into the
    :class:`ClusterError` of :func:`refusal_error`."""
    from submitit.core.utils import FailedJobError  # only where submitit submits anyway

    try:
        yield
    except FailedJobError as exc:
        raise refusal_error(profile, str(exc), name) from None


def never_starts(reason: str | None) -> bool:
    """Whether a pending job's Slurm ``reason`` (``PartitionConfig``, ``ReqNodeNotAvail,
    Reserved for maintenance``) means it will never start: only the reasons of
    :data:`PERMANENT_REASONS`, whatever detail follows the comma."""
    if not reason:
        return False
    return reason.split(",")[0].strip().strip("()") in PERMANENT_REASONS


#: Seconds between the ``squeue`` calls that read the pending reasons of this user's jobs (one
#: call answers every job this process waits for).
REASON_CHECK_S = 15.0

#: The longest interval between those ``squeue`` calls while the reasons stay the same,
#: seconds (a job that pends for hours in a busy queue need not be asked about every 15 s).
REASON_CHECK_MAX_S = 120.0

#: Seconds a job may pend before a waiting command says again that it still does; each later
#: reminder of the same job comes after twice the wait of the one before (10 min, 20, 40 ...).
PENDING_REMIND_S = 600.0

_cache: dict[str, object] = {"at": None, "reasons": {}}
_reason_pace: dict[str, Backoff] = {}
_said: set[tuple[str, str]] = set()
#: Per Slurm job (an array by its array id): when it was first seen pending (time.monotonic)
#: and how long it had pended at its next reminder, seconds.
_pending: dict[str, tuple[float, float]] = {}


def pending_reasons(
    job_ids: Sequence[str] | None = None, timeout_s: float = 60.0
) -> dict[str, str]:
    """Slurm's reason (``squeue %r``: ``Resources``, ``PartitionConfig`` ...) for each pending
    job among ``job_ids`` (default: all of this user's), by job id (array tasks ``A_I``).
    Raises :class:`ClusterError` when ``squeue`` cannot answer within ``timeout_s`` seconds."""
    cmd = ["squeue", "-h", "-r", "-t", "PENDING", "-o", "%i|%T|%r"]
    cmd += ["-j", ",".join(job_ids)] if job_ids else ["-u", getpass.getuser()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise timed_out("squeue", timeout_s) from exc
    except OSError as exc:
        raise ClusterError(f"squeue could not be run: {exc}") from exc
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            return {}
        raise slurm_failure("squeue", proc.stderr, f"squeue failed ({proc.returncode})")
    out = {}
    for line in proc.stdout.splitlines():
        jid, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if state == "PENDING" and reason:
            out[jid] = reason
    return out


def pending_words(job_ids: Sequence[str], timeout_s: float = 60.0) -> dict[str, str]:
    """Why each pending Slurm job among ``job_ids`` waits, in words for a listing's detail
    column: Slurm's reason, and what ends the wait where that is known (``pending reason:
    JobHeldAdmin (held: scontrol release 12 lets it start)``), by job id. One ``squeue`` call;
    {} when none is pending or ``squeue`` cannot answer within ``timeout_s`` seconds (the
    listing shows what it has)."""
    if not job_ids:
        return {}
    try:
        reasons = pending_reasons(job_ids, timeout_s)
    except ClusterError:
        return {}
    return {
        jid: f"pending reason: {reason}{reason_hint(jid, reason)}"
        for jid, reason in reasons.items()
        if reason != "None"
    }


def reason_hint(job_id: str, reason: str) -> str:
    """What ends the wait of pending job ``job_id`` for Slurm's ``reason``, where that is
    known, as `` (...)`` to append to the reason; else ''."""
    if never_starts(reason):
        return " (Slurm will never start it: lower its request)"
    if reason.startswith("JobHeld"):
        return f" (held: scontrol release {job_id} lets it start)"
    return ""


def _reasons_now() -> dict[str, str]:
    """:func:`pending_reasons` of this user's jobs, asked at most every
    :data:`REASON_CHECK_S` seconds, less often while the reasons stay the same (up to every
    :data:`REASON_CHECK_MAX_S` seconds: :class:`~pomlia_hpc.cluster.backoff.Backoff`), {}
    while ``squeue`` cannot answer."""
    pace = _reason_pace.get("pace")
    if pace is None or pace.start_s != REASON_CHECK_S:  # a test may change the interval
        pace = _reason_pace["pace"] = Backoff(REASON_CHECK_S, ceiling_s=REASON_CHECK_MAX_S)
    at = _cache["at"]
    if not isinstance(at, float) or time.monotonic() - at >= pace.interval_s:
        _cache["at"] = time.monotonic()
        try:
            _cache["reasons"] = pending_reasons()
        except ClusterError:
            _cache["reasons"] = {}
        asked = _cache["reasons"]
        pace.next(tuple(sorted(asked.items())) if isinstance(asked, dict) else None)
    reasons = _cache["reasons"]
    return reasons if isinstance(reasons, dict) else {}


def watch_pending(handle: PendingJob) -> None:
    """For a pending Slurm job: note Slurm's reason (``handle.pending_reason``), say it once
    when it changes, and cancel a job that will never start (:func:`never_starts`), giving up
    on it with a cause that names its request and the reason."""
    job_id = handle.scheduler_id
    if job_id is None:
        return
    reason = _reasons_now().get(job_id)
    handle.pending_reason = reason
    array = job_id.split("_")[0]
    if not reason or reason == "None":
        _pending.pop(array, None)
        return
    hint = reason_hint(job_id, reason)
    since, remind = _pending.setdefault(array, (time.monotonic(), PENDING_REMIND_S))
    pended = time.monotonic() - since
    if (array, reason) not in _said:
        _said.add((array, reason))
        say(f"job {handle.name} pending: {reason}{hint}", sys.stderr)  # a note: stderr
    elif pended >= remind:  # a held job waited in silence for ever
        _pending[array] = (since, remind * 2)
        say(
            f"job {handle.name} still pending after {_duration(pended)}: {reason}{hint}",
            sys.stderr,
        )
    if never_starts(reason):
        request = request_text(handle.resources)
        handle.cancel(
            f"Slurm will never start it: the request ({request}) exceeds what the cluster "
            f"allows (pending reason {reason}); lower the request or change the profile"
        )
        handle.given_up_state = "CANCELLED"


def _duration(seconds: float) -> str:
    """``seconds`` in words: ``45 s``, ``12 min``, ``3.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def signal_delay_warning(profile: ClusterProfile) -> str | None:
    """A warning when the USR2 that makes a job checkpoint (asked for ``signal_delay_s`` seconds
    before the time limit, which Slurm may send up to :data:`SIGNAL_EARLY_S` seconds earlier)
    can come in the first half of the job's ``time_min`` (minutes): such a job spends most of
    each attempt being told to stop, may never finish an epoch, and one told while it starts
    may be killed outright."""
    early = profile.signal_delay_s + SIGNAL_EARLY_S
    if profile.backend != "slurm" or early * 2 < profile.time_min * 60:
        return None
    return (
        f"warning: the checkpoint signal comes {profile.signal_delay_s} s before a "
        f"{profile.time_min} min time limit (Slurm may send it up to {SIGNAL_EARLY_S} s "
        "earlier), possibly in the first half of each attempt: the job may be requeued again "
        "and again without finishing an epoch, or killed outright by a signal that comes "
        "before it can checkpoint; raise time_min"
    )


def warn_signal_delay(profile: ClusterProfile) -> None:
    """Say :func:`signal_delay_warning` once per process and limit."""
    text = signal_delay_warning(profile)
    if text is not None and ("delay", text) not in _said:
        _said.add(("delay", text))
        say(text, sys.stderr)  # a warning for people: stderr, not the results
