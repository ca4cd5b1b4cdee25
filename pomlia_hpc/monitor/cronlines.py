"""The cron and scrontab forms of a monitoring chain (:mod:`pomlia_hpc.monitor.schedule`),
and the refusal of a schedule on a profile without Slurm, whose hint is the cron line."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path

from pomlia_hpc.config import load_cluster_profile
from pomlia_hpc.errors import InputError
from pomlia_hpc.monitor.placement import chain_sbatch, profile_args
from pomlia_hpc.registry import shown_url
from pomlia_hpc.workspace import Workspace, default_db_url


def parse_at(text: str) -> tuple[int, int]:
    """``"02:00"`` → (2, 0)."""
    hh, sep, mm = text.partition(":")
    if not (sep and hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
        raise InputError(f"--at '{text}' is not valid; expected a time of day HH:MM, e.g. 02:00")
    return int(hh), int(mm)


def next_begin(at: str | None, every: timedelta, now: datetime | None = None) -> datetime:
    """The next start strictly after ``now`` (local time): today's ``at`` plus whole periods,
    or ``now + every`` without ``at``. ``now`` may be in any zone (``--after`` is read as UTC):
    ``at`` is a wall-clock time of this machine's zone, so it is applied to ``now`` in that zone,
    and the result is local time (a daily run stays at ``at`` across a DST change)."""
    now = (now or datetime.now()).astimezone().replace(microsecond=0)
    if at is None:
        return now + every
    h, m = parse_at(at)
    wall = now.replace(tzinfo=None)  # whole periods on the local wall clock, not UTC's
    t = wall.replace(hour=h, minute=m, second=0)
    if t > wall:
        back = (t - wall - timedelta(seconds=1)) // every  # earlier slots today still ahead
        t -= back * every
    else:
        t += ((wall - t) // every + 1) * every
    return t.astimezone()  # a naive time is read as local time, with that day's UTC offset


def _cron_fields(at: str | None, every: timedelta) -> str | None:
    """The crontab time fields of the chain's runs: those of its first run (:func:`next_begin`),
    so a weekly line names the weekday the chain runs on (it said Sunday whatever the day) and
    a chain without ``--at`` keeps its time of day (the line said midnight)."""
    first = next_begin(at, every)
    h, m, weekday = first.hour, first.minute, first.isoweekday() % 7  # cron: 0 is Sunday
    if every == timedelta(days=1):
        return f"{m} {h} * * *"
    if every == timedelta(hours=1):
        return f"{m} * * * *"
    if every == timedelta(weeks=1):
        return f"{m} {h} * * {weekday}"
    return None


def cron_lines(
    at: str | None,
    period: timedelta,
    jname: str,
    conf: Path,
    script: Path,
    workspace: Workspace,
    name: str,
    window: str,
    on_alarm: str | None,
) -> tuple[str | None, str | None]:
    """The equivalent cron and scrontab lines (``None`` when the period has no cron form).
    The cron line submits the chain's script, which takes every setting (registry, alarm
    action) from ``conf``; the scrontab line runs the monitor with the same settings."""
    fields = _cron_fields(at, period)
    if not fields:
        return None, None
    # The settings file goes in the environment, not in --export=ALL,NAME=VALUE: sbatch
    # splits that at commas, which a path may hold.
    # Its log beside the chain's (sbatch's own is the cwd of cron: the user's home).
    log = shlex.quote(str(conf.parent / "slurm-%j.out"))
    # The chain's partition, account and QOS (its profile's), as each of its runs asks.
    where = "".join(f" {shlex.quote(a)}" for a in profile_args(workspace.cluster_profile))
    submit = (
        f"POMLIA_MONITOR_CONF={shlex.quote(str(conf))} POMLIA_MONITOR_ONCE=1 sbatch "
        f"--job-name={shlex.quote(jname)} --dependency=singleton --export=ALL "
        f"--output={log}{where} {shlex.quote(str(script))}"
    )
    cron = f"{fields} {_cron_escape(submit)}"
    registry = registry_env_line(workspace)
    # The chain's script's own requests (CPUs, memory, time limit): a scrontab job runs the
    # monitor itself, without the script, and would otherwise get the partition's defaults.
    asked = chain_sbatch()
    sized = " ".join(f"--{k}={asked[k]}" for k in ("cpus-per-task", "mem", "time"))
    scron = "\n".join(
        [
            *([registry] if registry else []),
            f"#SCRON --job-name={shlex.quote(jname)} {sized} --output={log}{where}",
            f"{fields} {run_command(workspace, name, window, on_alarm)}",
        ]
    )
    return cron, scron


def _cron_escape(command: str) -> str:
    """``command`` as a crontab line's command: cron reads an unescaped ``%`` as a newline."""
    return command.replace("%", "\\%")


def registry_env_line(workspace: Workspace) -> str | None:
    """The crontab (or scrontab) environment line that names the workspace's registry,
    ``POMLIA_DB_URL=...`` with its password as ``***`` (to be filled in by hand; the crontab
    is its owner's alone, while a ``--db-url`` on the command line shows in ``ps``); ``None``
    for the workspace's own SQLite registry, which ``--home`` already selects."""
    if workspace.db_url == default_db_url(workspace.home):
        return None
    return f"POMLIA_DB_URL={shown_url(workspace.db_url)}"


def run_command(workspace: Workspace, model: str, window: str, on_alarm: str | None) -> str:
    """The shell command that runs ``pomlia monitor run MODEL`` once on this workspace (its
    registry comes from the environment: :func:`registry_env_line`); every value quoted."""
    alarm = f" --on-alarm {shlex.quote(on_alarm)}" if on_alarm else ""
    return (
        f"{shlex.quote(sys.executable)} -m pomlia_hpc --home "
        f"{shlex.quote(str(workspace.home))} monitor run {shlex.quote(model)} "
        f"--window {shlex.quote(window)}{alarm}"
    )


def cron_run_line(
    workspace: Workspace,
    model: str,
    *,
    at: str | None,
    every: timedelta,
    window: str,
    on_alarm: str | None = None,
) -> str | None:
    """The crontab lines that run ``pomlia monitor run MODEL`` on this machine every period
    (no Slurm: the job of a workspace on the local profile): :func:`registry_env_line` (when
    the registry is not the workspace's own SQLite file), then the schedule and command;
    ``None`` when the period has no cron form (only 1h, 1d and 1w have one). Every value is
    shell-quoted, and the registry's password is shown as ``***``: the lines are printed,
    stored and logged."""
    fields = _cron_fields(at, every)
    if fields is None:
        return None
    command = f"{fields} {_cron_escape(run_command(workspace, model, window, on_alarm))}"
    registry = registry_env_line(workspace)
    return f"{registry}\n{command}" if registry else command


def has_hidden_password(workspace: Workspace) -> bool:
    """Whether the lines of :func:`registry_env_line` show the registry URL with its password
    hidden (``user:password@`` or ``?password=``): the user must fill it in."""
    if registry_env_line(workspace) is None:
        return False
    return "***" in shown_url(workspace.db_url) and "***" not in workspace.db_url


def check_slurm_profile(
    workspace: Workspace,
    model: str,
    at: str | None,
    period: timedelta,
    window: str,
    on_alarm: str | None,
) -> None:
    """Refuse a schedule on a profile that is not a Slurm one (the chain is Slurm jobs: on
    the local profile sbatch failed with a raw "Unable to contact slurm controller"); the
    hint is the cron line that runs the monitor on this machine instead."""
    profile = load_cluster_profile(workspace.cluster_profile)
    if profile.backend == "slurm":
        return
    cron = cron_run_line(workspace, model, at=at, every=period, window=window, on_alarm=on_alarm)
    if cron is None:
        hint = (
            f"without Slurm, run `{run_command(workspace, model, window, on_alarm)}` from "
            "cron (this period has no single cron line)"
        )
    else:
        lines = "".join(f"\n    {line}" for line in cron.splitlines())
        hint = f"without Slurm, run the monitor from cron instead (crontab -e):{lines}"
    registry = registry_env_line(workspace)
    if registry is not None:
        hint += (
            "\n    (the registry goes in the crontab's environment, POMLIA_DB_URL, not in "
            "--db-url on the command line, which every user of the machine sees in ps"
            + (
                ": the password is shown as ***, write it in there)"
                if has_hidden_password(workspace)
                else ")"
            )
        )
    raise InputError(
        f"monitor schedule submits a chain of Slurm jobs, but the cluster profile "
        f"'{workspace.cluster_profile}' has the {profile.backend} backend: pass --cluster "
        "PROFILE (a Slurm profile, e.g. slurm-local or haicore)",
        hint=hint,
    )
