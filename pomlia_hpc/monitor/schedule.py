"""Nightly monitoring on Slurm: a self-resubmitting job chain per model.

``schedule`` writes the chain's settings to ``<home>/jobs/monitor/<model>/schedule.env``,
copies ``jobs/monitor.sbatch`` beside it and submits it as job ``pomlia-monitor-<model>`` with
``--begin`` at the next occurrence of ``--at`` (every ``--every``) and
``--dependency=singleton``. Each run submits the next one (:func:`resubmit`) before it
monitors, unless a job of the chain is already queued: a requeued or doubly submitted job then
adds nothing, so one chain per model survives. The resubmission needs Slurm, not the registry
(out of reach, the job goes unrecorded), and asks Slurm again for a while when it fails.
``--replace`` submits the new chain first and then cancels the old one's jobs by id (a failed
submission leaves the old chain and its settings as they were); lines a user added to the
settings (``SETTLE``) are kept (:func:`user_lines`). ``unschedule`` asks Slurm first, then
removes the settings file (a run that starts later does nothing, and no run can resubmit)
and cancels every queued job of the chain. A job name is the user's in every workspace: the
chain's jobs are those of its name that run its own script
(:func:`~pomlia_hpc.monitor.chains.chain_script`), so a chain of the same model name in
another workspace is neither counted nor cancelled.

Each job is given its scheduled start (``POMLIA_MONITOR_BEGIN``, the ``--begin`` it was
submitted with). A run tests the window that ends there, less a settling margin (``monitor run
--until BEGIN --settle 5m``: records written late are in the next window), and
submits the next run one period after it (``--after BEGIN``), not after its actual start: a
held job still tests its own period, and the chain neither drifts nor leaves a gap. A next run
whose time has passed stands for all the missed ones (:mod:`pomlia_hpc.monitor.catchup`).

A chain scheduled for a deployment slot (``monitor schedule SLOT`` or ``slot:SLOT``) is the
slot's, not its champion's: its key is ``slot:SLOT`` (settings in
``jobs/monitor/slot:SLOT/``, job ``pomlia-monitor-slot:SLOT``; a name cannot hold a colon, so
no model's chain has that key) and each run monitors the model the slot serves at that moment
(``monitor run slot:SLOT``, which says which model it tested; the report records it). A
promotion onto the slot therefore moves the monitoring with it, with nothing to update and no
window in which the old model is tested instead. A chain scheduled for a model stays on that
model; scheduling one that a promotion has replaced on every slot it was on warns, and so does
each of its runs (:func:`~pomlia_hpc.monitor.reference.replaced_note`).

Each chain's settings record what it was scheduled for (``CHAIN_KIND=slot`` or ``model``;
its jobs' registry rows too, ``Job.meta["kind"]``). Before slot chains, ``schedule SLOT``
keyed the chain by the champion's name: it monitors that model for good. ``schedule SLOT``
refuses beside such a chain (settings or queued jobs under the slot's current champion's
name), ``--replace`` ends it once the slot's chain is queued, and ``unschedule SLOT`` ends it
too. A chain scheduled for the champion by name on purpose (``schedule MODEL``) is recorded as
a model's chain and left alone; only settings without a record (written before it was kept)
are taken by the name rule, as nothing else tells them apart (:func:`legacy_chain`).

Slurm starts a job at the first scheduling pass after its begin time (every second with this
project's test cluster, ``sched_interval=1``; typically 60 s on a production cluster), so a
period of a few seconds works in tests and a nightly run starts within about a minute.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from pomlia_hpc.cluster.batch import (
    QueuedJob,
    cancel_ids,
    jobs_named,
    submit_script,
)
from pomlia_hpc.cluster.records import record_submission
from pomlia_hpc.errors import ClusterError, InputError, PomliaError
from pomlia_hpc.files import write_atomic
from pomlia_hpc.monitor.catchup import NextRun, next_run, script_catches_up
from pomlia_hpc.monitor.chains import chain_kind, job_labels, job_name
from pomlia_hpc.monitor.chains import is_scheduled as is_scheduled
from pomlia_hpc.monitor.cronlines import (
    check_slurm_profile,
    cron_lines,
    parse_at,
)
from pomlia_hpc.monitor.cronlines import cron_run_line as cron_run_line
from pomlia_hpc.monitor.cronlines import has_hidden_password as has_hidden_password
from pomlia_hpc.monitor.cronlines import next_begin as next_begin
from pomlia_hpc.monitor.ending import chain_key as chain_key
from pomlia_hpc.monitor.ending import (
    end_legacy,
    legacy_chain,
    legacy_refusal,
    queued_labels,
    record_cancelled,
)
from pomlia_hpc.monitor.ending import unschedule as unschedule
from pomlia_hpc.monitor.placement import SETTING, profile_args, recorded_args
from pomlia_hpc.monitor.reference import (
    SLOT_PREFIX,
    load_reference,
    replaced_note,
    resolve_target,
)
from pomlia_hpc.monitor.run import parse_duration
from pomlia_hpc.registry import Registry, RegistryNewerError
from pomlia_hpc.workspace import Workspace

SOURCE_ROOT = Path(__file__).resolve().parents[2]
#: The chain's settings hold the registry URL with its password: the owner's alone, from the
#: moment the file exists (the jobs run as the owner, and source it).
CONF_MODE = 0o600
SCRIPT = Path("jobs") / "monitor.sbatch"
#: The first line of the chain's settings file.
HEADER = "# written by `pomlia monitor schedule`; removed by `pomlia monitor unschedule`\n"
#: A shell assignment in the settings file (``export NAME=...`` or ``NAME=...``): its name.
_ASSIGNED = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")


@dataclass(frozen=True)
class Scheduled:
    """What ``schedule`` did: the job, when it starts, and the lines for cron/scrontab."""

    job_id: str | None
    begin: datetime
    conf: Path
    script: Path
    cron: str | None
    scrontab: str | None
    note: str = ""
    record_id: int | None = None  # the job's registry row (`pomlia jobs list`)
    replaced: tuple[str, ...] = ()  # the old chain's jobs cancelled by --replace
    # What the user should know: the submission stands (a failure after it, a model that
    # serves no slot any more).
    warnings: tuple[str, ...] = ()
    key: str = ""  # the chain's key: the model's name, or slot:SLOT (job_name's argument)
    slot: str | None = None  # the deployment slot the chain follows
    champion: str | None = None  # the model the slot serves now (what the first run tests)


def _write_conf(
    path: Path,
    *,
    model: str,
    every: str,
    at: str | None,
    window: str,
    on_alarm: str | None,
    workspace: Workspace,
    old: str | None = None,
) -> None:
    """Write the chain's settings to ``path``; the lines a user added to the ``old`` settings
    (``SETTLE=10m``, a comment) are kept after the ones written here."""
    values = {
        "MODEL": model,
        # What the chain is for, recorded: a slot's (MODEL=slot:SLOT) or a model's. A model
        # chain of a slot's champion must not pass for a chain `schedule SLOT` made before
        # slot chains, which had the same key (legacy_chain).
        "CHAIN_KIND": "slot" if model.startswith(SLOT_PREFIX) else "model",
        "EVERY": every,
        "AT": at or "",
        "WINDOW": window,
        "ON_ALARM": on_alarm or "",
        "PY": sys.executable,
        "POMLIA_HOME": str(workspace.home),
        "POMLIA_DB_URL": workspace.db_url,
        SETTING: shlex.join(profile_args(workspace.cluster_profile)),  # where its jobs run
    }
    text = HEADER + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
    text += "".join(user_lines(old, set(values)))
    write_atomic(path, text, mode=CONF_MODE)


def user_lines(old: str | None, written: set[str]) -> list[str]:
    """The lines of settings ``old`` that ``schedule`` did not write: neither its header nor
    an assignment of one of the ``written`` names (with or without ``export``), each with its
    newline. A ``--replace`` rewrote the file and dropped them: a user's ``SETTLE=10m`` went,
    and the chain's next run used 5 minutes again. A written value that spans lines (an
    ``--on-alarm`` command with a newline, quoted over two lines) is left out whole: its
    second line kept alone opened a quote that the file never closed, and every run failed
    to read its settings."""
    kept = []
    written_value = ""  # the lines so far of a written assignment whose quote is still open
    for line in (old or "").splitlines():
        if written_value:
            written_value += "\n" + line
            if _whole(written_value):
                written_value = ""
            continue
        m = _ASSIGNED.match(line)
        if m is not None and m.group(1) in written:
            written_value = "" if _whole(line) else line
            continue
        if line != HEADER.rstrip("\n"):
            kept.append(line + "\n")
    return kept


def _whole(text: str) -> bool:
    """Whether the shell text ``text`` closes every quote it opens."""
    try:
        shlex.split(text, comments=True)
    except ValueError:  # "No closing quotation"
        return False
    return True


def _write_files(
    conf: Path,
    script: Path,
    name: str,
    every: str,
    at: str | None,
    window: str | None,
    on_alarm: str | None,
    workspace: Workspace,
) -> str | None:
    """Write the chain's settings and script; returns the settings they replaced (``None``:
    there were none), for putting back when the submission fails."""
    conf.parent.mkdir(parents=True, exist_ok=True)
    old_conf = conf.read_text() if conf.is_file() else None
    _write_conf(
        conf,
        model=name,
        every=every,
        at=at,
        window=window or every,
        on_alarm=on_alarm,
        workspace=workspace,
        old=old_conf,
    )
    try:
        # Whole or not at all: a running chain's job resubmits this very file, and a copy cut
        # short by a full disk would end the chain (or run half a script) at its next run.
        write_atomic(script, (SOURCE_ROOT / SCRIPT).read_bytes(), mode=0o755)
        script.chmod(0o755)  # the umask may have narrowed it; the script is no secret
    except BaseException:
        with contextlib.suppress(OSError):  # settings and script stay a pair
            if old_conf is None:
                conf.unlink(missing_ok=True)
            else:
                write_atomic(conf, old_conf, mode=CONF_MODE)
        raise
    return old_conf


def schedule(
    registry: Registry,
    workspace: Workspace,
    model: str,
    *,
    every: str = "1d",
    at: str | None = "02:00",
    window: str | None = None,
    on_alarm: str | None = None,
    replace: bool = False,
) -> Scheduled:
    """Schedule ``model``'s chain and submit its first run (see the module docstring);
    ``window`` defaults to ``every``. A running job of the chain submits the next one with
    :func:`resubmit`."""
    period = parse_duration(every, "--every")
    if at is not None:
        parse_at(at)
    name = chain_key(registry, model)
    slot = name.removeprefix(SLOT_PREFIX) if name.startswith(SLOT_PREFIX) else None
    folder = workspace.path("jobs", "monitor", name)
    conf, script = folder / "schedule.env", folder / "monitor.sbatch"
    begin = next_begin(at, period)
    jname = job_name(name)
    champion, advice = _check_target(registry, name, slot)
    parse_duration(window or every, "--window" if window else "--every")
    # Before squeue is asked: without Slurm its own error said nothing about the profile.
    check_slurm_profile(workspace, name, at, period, window or every, on_alarm)
    mine = jobs_named(jname, script)  # this workspace's chain (the name is the user's)
    queued = [j for j in mine if j.job_id != os.environ.get("SLURM_JOB_ID")]
    legacy = _check_free(registry, workspace, name, slot, queued, replace)
    old_conf = _write_files(conf, script, name, every, at, window, on_alarm, workspace)
    cron, scron = cron_lines(
        at, period, jname, conf, script, workspace, name, window or every, on_alarm
    )
    try:
        job_id = _submit(script, jname, begin, conf)
    except PomliaError:  # nothing half-done: an old chain keeps its own settings
        if old_conf is None:
            conf.unlink(missing_ok=True)
        else:
            write_atomic(conf, old_conf, mode=CONF_MODE)
        raise
    # Only now, with the new job queued, the old chain goes (by id: its name is the new job's).
    replaced, warnings = _cancel_old(registry, jname, script, job_id) if queued else ([], [])
    if legacy is not None:  # the champion-named chain this slot's chain replaces
        more, warned = end_legacy(registry, workspace, legacy)
        replaced, warnings = [*replaced, *more], [*warnings, *warned]
    kind = chain_kind(workspace, name)  # as the settings record it (None: written before)
    meta = {"model": name, "begin": begin.isoformat(), "chain": False, "slot": slot, "kind": kind}
    record_id, note = _record_job(registry, job_id, jname, folder, meta)
    return Scheduled(
        job_id=job_id,
        begin=begin,
        conf=conf,
        script=script,
        cron=cron,
        scrontab=scron,
        note=note,
        record_id=record_id,
        replaced=tuple(replaced),
        warnings=(*advice, *warnings),
        key=name,
        slot=slot,
        champion=champion,
    )


def _submit(
    script: Path, jname: str, begin: datetime, conf: Path, since: datetime | None = None
) -> str:
    # The run's scheduled start and a catch-up run's window start (module docstring), empty
    # for the others: sbatch exports the caller's environment, a catch-up run's included.
    env = {"POMLIA_MONITOR_CONF": str(conf), "POMLIA_MONITOR_BEGIN": begin.isoformat()}
    env["POMLIA_MONITOR_SINCE"] = since.isoformat() if since is not None else ""
    out, extra = conf.parent / "slurm-%j.out", recorded_args(conf)
    return submit_script(script, name=jname, begin=begin, env=env, output=out, extra=extra)


def resubmit(
    open_registry: Callable[[], Registry],
    workspace: Workspace,
    key: str,
    *,
    every: str,
    at: str | None,
    after: datetime | None = None,
    window: str | None = None,
    say: Callable[[str], None] = print,
) -> Scheduled:
    """Submit the next run of the chain keyed ``key`` (its settings' ``MODEL``), from a
    running job of it: one period after ``after`` (the running job's scheduled start; default
    now), nothing when the settings are gone (unscheduled) or a next run is already queued (a
    requeue, a second chain). The chain must outlive a bad moment: Slurm is asked again
    (``RESUBMIT_TRIES`` times, ``RESUBMIT_DELAY_S`` apart; ``say`` tells each retry), and the
    registry, opened with ``open_registry``, is not needed to submit: unreachable, the job
    goes unrecorded (a note says so). A registry of a newer pomlia ends the chain (its runs
    would fail: docs/guide/monitor.md, "Upgrading"). A successor that is due already stands
    for every missed run (``window``: each run's, the period when None; module docstring)."""
    period = parse_duration(every, "--every")
    if at is not None:
        parse_at(at)
    conf = workspace.path("jobs", "monitor", key, "schedule.env")
    nxt = NextRun(next_begin(at, period, now=after), None, None)
    if after is not None and script_catches_up(conf.parent / "monitor.sbatch"):
        length = parse_duration(window, "--window") if window else period
        nxt = next_run(at, period, after, length, datetime.now().astimezone())
    begin, since = nxt.begin, nxt.since
    jname = job_name(key)
    # Slurm first: a registry that hangs (a server out of reach) must not keep the running job
    # from queueing its successor until its time limit kills it.
    job_id, pending = _submit_next(conf, jname, begin, say, since)
    registry, unreachable = _chain_registry(open_registry, job_id)
    if job_id is None:
        if not conf.is_file():
            note = "unscheduled: no next run"
        else:
            ids = [j.job_id for j in pending]
            labels = job_labels(registry, ids) if registry is not None else ids
            note = f"next run already queued: {', '.join(labels)}"
        return Scheduled(None, begin, conf, conf.parent / "monitor.sbatch", None, None, note)
    if (why := nxt.describe()) is not None:  # why it starts at once, or is not --window long
        say(why)
    slot = key.removeprefix(SLOT_PREFIX) if key.startswith(SLOT_PREFIX) else None
    kind = chain_kind(workspace, key)
    meta = {"model": key, "begin": begin.isoformat(), "chain": True, "slot": slot, "kind": kind}
    if since is not None:
        meta["since"] = since.isoformat()
    if registry is None:
        record_id, note = None, f"submitted, but not recorded: {unreachable}"
    else:
        record_id, note = _record_job(registry, job_id, jname, conf.parent, meta)
    script = conf.parent / "monitor.sbatch"
    return Scheduled(job_id, begin, conf, script, None, None, note, record_id, key=key, slot=slot)


#: How often, and how far apart (seconds), a chain's job asks Slurm again for its next run
#: (``POMLIA_MONITOR_RESUBMIT_TRIES``, ``POMLIA_MONITOR_RESUBMIT_DELAY_S``).
RESUBMIT_TRIES = 5
RESUBMIT_DELAY_S = 60.0


def _submit_next(
    conf: Path,
    jname: str,
    begin: datetime,
    say: Callable[[str], None],
    since: datetime | None = None,
) -> tuple[str | None, list[QueuedJob]]:
    """(the submitted job's id, []), or (None, the next runs already queued) when there are
    some or the settings are gone. A failed squeue or sbatch is tried again: the check is
    made again first, so an sbatch that timed out after queueing the job adds no second."""
    tries = max(1, int(os.environ.get("POMLIA_MONITOR_RESUBMIT_TRIES", RESUBMIT_TRIES)))
    delay = float(os.environ.get("POMLIA_MONITOR_RESUBMIT_DELAY_S", RESUBMIT_DELAY_S))
    own = os.environ.get("SLURM_JOB_ID")
    for attempt in range(1, tries + 1):
        if not conf.is_file():
            return None, []
        try:
            queued = jobs_named(jname, conf.parent / "monitor.sbatch")
            pending = [j for j in queued if j.job_id != own and j.state == "PENDING"]
            if pending:
                return None, pending
            return _submit(conf.parent / "monitor.sbatch", jname, begin, conf, since), []
        except ClusterError as exc:
            if attempt == tries:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            say(
                f"could not submit the next run ({first}); trying again in {delay:g} s "
                f"(try {attempt} of {tries})"
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _chain_registry(
    open_registry: Callable[[], Registry], job_id: str | None
) -> tuple[Registry | None, str]:
    """The registry for recording the resubmitted job ``job_id``, or (None, why not) when it
    cannot be opened now (a server down, a file out of reach): the chain goes on without the
    record. A registry a newer pomlia upgraded raises, after cancelling that job, as this
    install's runs would all fail (docs/guide/monitor.md, "Upgrading")."""
    try:
        return open_registry(), ""
    except RegistryNewerError:
        if job_id is not None:
            with contextlib.suppress(ClusterError):  # else it runs, and ends here again
                cancel_ids([job_id])
        raise
    except (PomliaError, SQLAlchemyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"the registry could not be opened ({first})"


def _check_free(
    registry: Registry,
    workspace: Workspace,
    name: str,
    slot: str | None,
    queued: list[QueuedJob],
    replace: bool,
) -> str | None:
    """Refuse a new chain beside a queued one (``queued``: its jobs) or, for a slot, beside
    the chain under its champion's name (:func:`legacy_chain`), unless ``replace``; returns
    that champion's name when its chain is to be ended (None: there is none)."""
    what = f"slot '{slot}'" if slot is not None else f"model '{name}'"
    if queued and not replace:
        raise InputError(
            f"{what} is already scheduled ({queued_labels(registry, queued)}); "
            f"end it with `pomlia monitor unschedule {shlex.quote(name)}` or pass --replace"
        )
    legacy = legacy_chain(registry, workspace, slot) if slot is not None else None
    if legacy is None:
        return None
    if not replace:
        raise InputError(legacy_refusal(registry, workspace, what, *legacy))
    return legacy[0]


def _check_target(registry: Registry, key: str, slot: str | None) -> tuple[str | None, list[str]]:
    """Check that the chain keyed ``key`` can run now (the model, or the slot's champion, is
    exported with a reference: fail now, not at 02:00); returns the slot's champion (None for
    a model's chain) and the warnings to show. A resubmission checks none of this: a slot's
    new champion without a reference must fail its own run (named in its output), not end
    the chain."""
    target = resolve_target(registry, key)
    load_reference(target)
    if slot is not None:
        return target.model.name, []
    note = replaced_note(registry, target.model)
    return None, [note] if note is not None else []


def _record_job(
    registry: Registry, job_id: str, jname: str, folder: Path, meta: dict[str, object]
) -> tuple[int | None, str]:
    """Record the submitted job like every other, so `pomlia jobs list` shows the chain's
    runs: (its registry id, ""). The job is queued already: a registry failure now must not
    read as "could not submit", so it is (None, a note saying so)."""
    try:
        (record_id,) = record_submission(
            registry,
            backend="slurm",
            scheduler_ids=[job_id],
            name=jname,
            folder=str(folder),
            meta=meta,
        )
    except (SQLAlchemyError, PomliaError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"submitted, but could not record it in the registry: {first}"
    return record_id, ""


def _cancel_old(
    registry: Registry, jname: str, script: Path, new_id: str
) -> tuple[list[str], list[str]]:
    """Cancel the jobs called ``jname`` other than ``new_id`` (and this job, when run from
    one): the replaced chain, including a run that resubmitted since we looked. Returns the
    cancelled ids and warnings; the new job stands either way, so nothing here raises."""
    mine = {new_id, os.environ.get("SLURM_JOB_ID")}
    warnings: list[str] = []
    try:
        old = [j.job_id for j in jobs_named(jname, script) if j.job_id not in mine]
        cancel_ids(old)
    except PomliaError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [], [f"could not cancel the replaced chain ({first}); end it with scancel"]
    try:  # at once, as unschedule does: `jobs list` must not show them queued
        record_cancelled(registry, old, "replaced by `monitor schedule --replace`")
    except (SQLAlchemyError, PomliaError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        warnings.append(
            f"replaced jobs {', '.join(old)} cancelled, but not recorded in the registry "
            f"({first}); `pomlia jobs list` shows them until its next refresh"
        )
    return old, warnings
