"""One monitor run: read the window, test it, write the report, record it, act on an alarm.

Reports go to ``<home>/reports/<model>/<UTC time>-<random>/`` (``report.json`` for machines,
``report.html`` for people), written in a staged folder beside it, recorded in the registry's
``monitor_reports``, then renamed into place (:mod:`pomlia_hpc.monitor.publish`): a report is
complete and recorded or absent, also after a kill at any step, which the next run of the
model's monitor settles (docs/ARCHITECTURE.md, crash protocols). An alarm also
records a ``retrain_requests`` row for the loop, or adds itself to the model's open one
(:mod:`pomlia_hpc.monitor.requests`), and runs the ``--on-alarm`` command, if any,
with the report's paths in its environment (``POMLIA_REPORT_JSON``, ``POMLIA_REPORT_HTML``,
``POMLIA_MODEL``, ``POMLIA_RETRAIN_REQUEST``) and its stdout on our stderr (stdout stays the
command's result, a JSON document with ``--json``).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from pomlia_hpc.errors import InputError
from pomlia_hpc.models.taskmetric import model_metric, model_task
from pomlia_hpc.monitor.checks import CheckOutcome, planned_tests, run_checks
from pomlia_hpc.monitor.history import show_time
from pomlia_hpc.monitor.labels import DEFAULT_LOOKBACK
from pomlia_hpc.monitor.logread import LogWindow, read_window
from pomlia_hpc.monitor.publish import publish_report
from pomlia_hpc.monitor.reference import (
    Target,
    load_reference,
    replaced_note,
    resolve_target,
)
from pomlia_hpc.monitor.reportdoc import build_report, retention_note
from pomlia_hpc.monitor.requests import AlarmRecorded, record_alarm
from pomlia_hpc.monitor.runlock import monitor_lock
from pomlia_hpc.monitor.stats import N_PERM
from pomlia_hpc.registry import Model, MonitorReport, Promotion, Registry
from pomlia_hpc.serve.exported import CARD
from pomlia_hpc.serve.inbox import inputs_dir, read_inputs
from pomlia_hpc.serve.predlog import log_dir
from pomlia_hpc.serve.reference import Reference
from pomlia_hpc.workspace import Workspace

#: Exit status of ``pomlia monitor run`` when the alarm rings (errors exit 2 or more; a crash
#: 70, never 1: docs/guide/README.md, "Exit status").
ALARM_EXIT = 1
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

Progress = Callable[[str], None]


#: The longest duration an option takes (1,000 years, in seconds): windows, schedules and
#: settle times are far shorter, and the dates around them must stay within years 1-9999.
MAX_DURATION_S = 1000 * 365 * 86400.0


def parse_duration(text: str, flag: str = "--window") -> timedelta:
    """``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"2w"`` → timedelta. ``flag``: the option
    the text came from, named in the error (the user knows the flag, not this function)."""
    m = _DURATION.match(text)
    seconds = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    if not 0 < seconds <= MAX_DURATION_S:  # past it, timedelta overflowed: a traceback
        raise InputError(
            f"{flag} '{text}' is not valid; expected a duration above zero and at most "
            f"{MAX_DURATION_S // 86400:.0f}d: a number and a unit s, m, h, d or w (e.g. 24h)"
        )
    return timedelta(seconds=seconds)


def _window(
    since: datetime | None, until: datetime | None, window: timedelta, settle: timedelta
) -> tuple[datetime, datetime]:
    """The window [since, until) a run tests: ``until`` (default now) and ``since`` (default
    ``until - window``) both moved ``settle`` earlier. A record timed just before the
    window's end can reach the log after the run read it (a replica whose clock is behind, a
    slow disk): it fell between two windows. Ending every window ``settle`` before the run's
    time (the previous run's end moved alike, so windows still tile) leaves such a record
    that long to arrive."""
    end = "--until" if until is not None else "now"
    try:
        until = (until or datetime.now(UTC)) - settle
        since = since - settle if since is not None else until - window
    except OverflowError:  # e.g. --since 0001-01-01 less a settle time, 900 years of window
        raise InputError(
            f"the window (--since / --until / --window / --settle) reaches before year 1 "
            f"from {end}: expected a window within years 1 to 9999"
        ) from None
    if since >= until:
        raise InputError(
            f"window start {since.isoformat(timespec='seconds')} (--since, or --until minus "
            f"--window) is not before its end {until.isoformat(timespec='seconds')} ({end}): "
            "expected a start before the end"
        )
    return since, until


def parse_time(text: str, what: str) -> datetime:
    """ISO 8601 date or time (a time without zone is UTC)."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(
            f"{what} '{text}' is not a valid time; expected ISO 8601, e.g. 2026-12-01T02:00"
        ) from exc
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class RunResult:
    """What a run produced: the report (as written), its files and registry rows."""

    report: dict[str, Any]
    json_path: Path
    html_path: Path
    report_id: int
    retrain_request_id: int | None
    hook_status: int | None
    #: Whether the alarm was added to the model's open retrain request (no new request).
    retrain_request_merged: bool = False

    @property
    def alarm(self) -> bool:
        return bool(self.report["alarm"])


def _least_typical_inputs(
    folders: list[Path], win: LogWindow, outcome: CheckOutcome | None, k: int = 16
) -> list[tuple[str, float, np.ndarray]]:
    """(prediction id, distance, uint8 HWC image) of the least typical sampled window inputs
    that the server kept (``pomlia serve --keep-inputs``); empty when none were kept."""
    kept = [inputs_dir(f) for f in folders if inputs_dir(f).is_dir()]
    if outcome is None or not kept:
        return []
    ranked = [(win.vector_ids[i], d) for i, d in outcome.least_typical(k)]
    ids = [i for i, _ in ranked]
    found = {item.id: item.as_uint8() for inbox in kept for item in read_inputs(inbox, ids)}
    return [(i, d, found[i]) for i, d in ranked if i in found]


def _note_replaced(
    registry: Registry, target: Target, report: dict[str, Any], progress: Progress
) -> None:
    """Warn (and note in ``report``) when the model was asked for by name and a promotion has
    replaced it on every slot it was on: it gets no more traffic there, and its empty windows
    must say why (a chain scheduled for the model, not its slot, would look quiet, not idle)."""
    if target.slot is not None or target.deployment_id is not None:
        return
    stale = replaced_note(registry, target.model)
    if stale is not None:
        progress(f"warning: {stale}")
        report["notes"].append(stale)


def model_log_dirs(registry: Registry, logs_root: Path, model: Model) -> list[Path]:
    """Every folder that may hold records of ``model``: its own (``pomlia serve MODEL``) and
    that of each deployment slot it was ever put on (a server following a slot logs under the
    slot's name, whichever model it serves; see :mod:`pomlia_hpc.loop.promote`)."""
    with registry.session() as s:
        slots = s.scalars(
            select(Promotion.slot).where(Promotion.model_id == model.id).distinct()
        ).all()
    return [log_dir(logs_root, name) for name in dict.fromkeys([model.name, *sorted(slots)])]


def history(registry: Registry, model_id: int, limit: int = 60) -> list[MonitorReport]:
    """The model's last ``limit`` reports, oldest first."""
    with registry.session() as s:
        rows = list(
            s.scalars(
                select(MonitorReport)
                .where(MonitorReport.model_id == model_id)
                .order_by(MonitorReport.id.desc())
                .limit(limit)
            )
        )
    return rows[::-1]


def _record(
    registry: Registry, target: Target, report: dict[str, Any], folder: Path
) -> tuple[int, AlarmRecorded | None]:
    with registry.session() as s:
        row = MonitorReport(
            deployment_id=target.deployment_id,
            model_id=target.model.id,
            drift={t["name"]: t for t in report["tests"]},
            metrics={
                # Which format's accuracy and refused share (history.comparable_accuracy).
                "format": report["format"],
                "status": report["status"],
                "window": report["window"],
                "predictions": report["volume"]["predictions"],
                "performance": report["performance"],
                "model_version": report["model_version"],
                "slot": report["slot"],
            },
            triggered=report["alarm"],
            report_path=str(folder / "report.json"),
        )
        s.add(row)
        s.flush()
        alarm = None
        if report["alarm"]:
            # One open request per model: a rerun over the same traffic adds to it.
            alarm = record_alarm(
                s,
                model_id=target.model.id,
                report_id=row.id,
                reason="monitor alarm: " + ", ".join(report["reasons"]),
                meta={
                    "model_version": report["model_version"],
                    "window": report["window"],
                    "report": str(folder / "report.json"),
                    "deployment_id": target.deployment_id,
                },
            )
        return row.id, alarm


def _stderr_fd() -> int:
    """The file descriptor of ``sys.stderr``, flushed (so the hook's lines follow ours), or 2
    when it has none (a test's captured stream)."""
    try:
        sys.stderr.flush()
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return 2


def _run_hook(command: str, env: dict[str, str], progress: Progress) -> int:
    progress(f"alarm: running hook: {command}")
    try:
        # The hook's stdout goes to stderr: inherited, its output landed in front of
        # `monitor run --json`'s report, and stdout was no JSON exactly when there was an alarm.
        done = subprocess.run(
            command,
            shell=True,
            env={**os.environ, **env},
            stdout=_stderr_fd(),
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired:
        progress("alarm hook did not finish within 300 s; left it")
        return 124
    if done.returncode:
        progress(f"alarm hook exited with status {done.returncode}")
    return done.returncode


def report_file_text(report: dict[str, Any]) -> str:
    """The text of a report's ``report.json`` (keys sorted), which `monitor show --json` reads
    back and `monitor run --json` prints without reading it: the ``--on-alarm`` command may
    have moved or changed the file by then."""
    return json.dumps(report, indent=2, sort_keys=True)


def _hook_env(final: Path, target: Target, alarm: AlarmRecorded | None) -> dict[str, str]:
    """What the ``--on-alarm`` command is told: the report's files, the model, the request."""
    return {
        "POMLIA_REPORT_JSON": str(final / "report.json"),
        "POMLIA_REPORT_HTML": str(final / "report.html"),
        "POMLIA_MODEL": target.model.name,
        "POMLIA_RETRAIN_REQUEST": str(alarm.request_id if alarm else ""),
    }


def _test_window(
    win: LogWindow,
    ref: Reference,
    alpha: float,
    n_perm: int,
    seed: int,
    progress: Progress,
    metric: str = "acc",
) -> CheckOutcome | None:
    """The tests of ``win`` against ``ref``, performance in the task's ``metric``; None when
    it holds neither predictions nor labels to test."""
    # Labels of earlier predictions arrive in windows without traffic too (a night without
    # requests, a model a promotion replaced): their accuracy is still tested.
    if not (win.n_predictions or win.feedback):
        return None
    progress(f"testing ({', '.join(planned_tests(win, ref, metric))})")
    outcome = run_checks(win, ref, alpha=alpha, n_perm=n_perm, seed=seed, metric=metric)
    if not win.n_predictions:
        # The metric the performance test compared (an AUC task's AUC, not its accuracy).
        tested_by = (outcome.performance or {}).get("metric", "acc")
        outcome.notes.append(
            "no predictions of this model version in the window: only the "
            f"{'accuracy' if tested_by == 'acc' else tested_by} on the labels that arrived in "
            "it is tested"
        )
    return outcome


def check_levels(alpha: float, n_perm: int) -> None:
    """Refuse an ``alpha`` outside (0, 1) and a permutation count with which the MMD test
    could never reject at ``alpha``."""
    if not 0 < alpha < 1:
        raise InputError(f"--alpha {alpha:g}: expected a number between 0 and 1 (exclusive)")
    if n_perm < 1:
        raise InputError(f"--permutations {n_perm}: expected an integer >= 1")
    if 1 / (n_perm + 1) > alpha * (1 + 1e-9):
        # The permutation p-value is at least 1/(n_perm + 1): above alpha, the MMD test could
        # never reject, and a drift only it sees would never alarm.
        least = math.ceil(1 / alpha - 1 - 1e-9)
        raise InputError(
            f"--permutations {n_perm}: the MMD test's smallest p-value is then "
            f"1/{n_perm + 1} = {1 / (n_perm + 1):.3g}, above --alpha {alpha:g}, so it could "
            f"never alarm; expected at least {least} (1/(N+1) <= alpha; the MMD test gets a "
            f"share of alpha, so use well more: the default is {N_PERM})"
        )


def _read(
    registry: Registry,
    workspace: Workspace,
    target: Target,
    reference: Reference,
    window: tuple[datetime, datetime, timedelta],
    *,
    max_vectors: int,
    seed: int,
    metric: str,
    progress: Progress,
) -> tuple[list[Path], LogWindow]:
    """The log folders of ``target``'s model and its ``window`` (since, until, label
    look-back), said in ``progress``; an AUC task's labelled predictions keep their
    probabilities (its performance test ranks them)."""
    since, until, label_lookback = window
    folders = model_log_dirs(registry, workspace.path("logs"), target.model)
    where = ", ".join(str(f) for f in folders)
    progress(f"reading {where} from {show_time(since)} to {show_time(until)}")
    win = read_window(
        folders,
        model=target.model.name,
        version=reference.model_version,
        kind=reference.fingerprint_kind,
        dim=int(reference.fingerprints.shape[1]),
        since=since,
        until=until,
        multi_label=reference.task_type == "multi-label",
        classes=len(reference.label_names) or None,
        max_vectors=max_vectors,
        seed=seed,
        deployment=target.deployment_id,
        label_lookback=label_lookback,
        keep_probabilities=metric == "auc",
    )
    progress(
        f"{win.n_predictions} predictions and {len(win.feedback)} labels that arrived in "
        f"the window ({win.files_read} files, {win.lines} lines)"
    )
    return folders, win


def monitor_run(
    registry: Registry,
    workspace: Workspace,
    ref: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    window: timedelta = timedelta(hours=24),
    alpha: float = 0.05,
    n_perm: int = N_PERM,
    max_vectors: int = 1000,
    on_alarm: str | None = None,
    seed: int = 0,
    label_lookback: timedelta = DEFAULT_LOOKBACK,
    settle: timedelta = timedelta(0),
    progress: Progress = lambda _m: None,
) -> RunResult:
    """Monitor ``ref`` (model name/id, ``deployment:ID`` or a deployment slot, whose champion
    is monitored) over [since, until) (default: the ``window`` before now), testing the
    labels that arrived in it (their predictions looked up to ``label_lookback`` before
    ``since``: :mod:`pomlia_hpc.monitor.labels`); see the module docstring. ``settle``: the
    window is moved that much earlier (both ends), so it ended that long before the run reads."""
    from pomlia_hpc.monitor.html import render_html

    check_levels(alpha, n_perm)
    since, until = _window(since, until, window, settle)
    target = resolve_target(registry, ref)
    if target.slot is not None:
        progress(f"slot '{target.slot}' serves model '{target.model.name}': monitoring that model")
    # One run of a model at a time (monitor/runlock.py): held to the end of --on-alarm.
    with monitor_lock(workspace, target.model.name, ref, progress):
        reference = load_reference(target)
        card = f"the bundle's card ({target.bundle.root / CARD})"
        task = model_task(registry, target.model)
        # the gate's rule (loop.gate.gate_metric): one metric for the alarm and the promotion
        decided = model_metric(target.model.name, target.bundle.card, card, task)
        metric, metric_note = decided.metric, decided.note
        if metric_note is not None:
            progress(f"warning: {metric_note}")
        span = (since, until, label_lookback)
        folders, win = _read(
            registry,
            workspace,
            target,
            reference,
            span,
            max_vectors=max_vectors,
            seed=seed,
            metric=metric,
            progress=progress,
        )
        if (gone := retention_note(win)) is not None:
            progress(f"warning: {gone}")
        outcome = _test_window(win, reference, alpha, n_perm, seed, progress, metric)
        report = build_report(target, reference, win, outcome, alpha=alpha)
        if metric_note is not None:
            report["notes"].insert(0, metric_note)
        _note_replaced(registry, target, report, progress)
        past = history(registry, target.model.id)
        atypical = _least_typical_inputs(folders, win, outcome)
        if atypical:
            report["least_typical"] = [{"id": i, "distance": d} for i, d, _ in atypical]
        html = render_html(report, past, outcome, reference, atypical)
        parent = workspace.path("reports", target.model.name)
        parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        final = parent / f"{stamp}-{uuid.uuid4().hex[:6]}"
        report_id, alarm = publish_report(
            registry,
            final,
            {"report.json": report_file_text(report), "report.html": html},
            lambda: _record(registry, target, report, final),
        )
        # The id and the page are the command's result (stdout); progress says only the step, so
        # a terminal, which shows both streams, reads "report N" once.
        progress(f"recorded the report ({report['status']})")
        hook_status = None
        if report["alarm"] and on_alarm:
            hook_status = _run_hook(on_alarm, _hook_env(final, target, alarm), progress)
        return RunResult(
            report,
            final / "report.json",
            final / "report.html",
            report_id,
            alarm.request_id if alarm else None,
            hook_status,
            alarm is not None and alarm.merged,
        )
