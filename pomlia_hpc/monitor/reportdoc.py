"""The content of a monitor report (``report.json``; its fields: ``docs/guide/monitor.md``,
"Reports"): the window's log summary, its notes in words and the tests' outcome. :mod:`.run`
writes it.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from pomlia_hpc.monitor.checks import CheckOutcome
from pomlia_hpc.monitor.history import FORMAT, show_time
from pomlia_hpc.monitor.labels import label_notes
from pomlia_hpc.monitor.logread import LogWindow
from pomlia_hpc.monitor.reference import Target
from pomlia_hpc.serve.records import LOG_FORMAT
from pomlia_hpc.serve.reference import Reference

__all__ = ["build_report", "retention_note"]


def _log_summary(win: LogWindow) -> dict[str, Any]:
    return {
        "files_read": win.files_read,
        "files_skipped_before_window": win.files_skipped_old,
        "lines": win.lines,
        "torn_lines": win.torn_lines,
        "corrupt_lines": win.corrupt_lines,
        "short_batches": win.short_batches,
        "corrupt_examples": win.corrupt_examples,
        "unknown_key_lines": win.unknown_key_lines,
        # Key -> records carrying it; the most frequent few (a garbled writer has no limit).
        "unknown_keys": dict(win.unknown_keys.most_common(20)),
        "newer_format_lines": sum(win.newer_formats.values()),
        "unreadable_files": win.unreadable_files,
        "other_versions": dict(win.other_versions),
        "other_models": dict(win.other_models),
        "retention_deleted_through": (
            win.deleted_through.isoformat() if win.deleted_through is not None else None
        ),
    }


def retention_note(win: LogWindow) -> str | None:
    """What log retention took from the window, in words; None when it took nothing."""
    if win.deleted_through is None:
        return None
    return (
        f"log retention (log_retention_days) deleted files last written up to "
        f"{show_time(win.deleted_through)}: predictions and labels of the window before then "
        "may be missing (the window starts "
        f"{show_time(win.since)}); keep the log longer than the window"
    )


def _log_notes(win: LogWindow, version: str) -> list[str]:
    notes = []
    if (gone := retention_note(win)) is not None:
        notes.append(gone)
    if win.torn_lines:
        notes.append(f"{win.torn_lines} torn last line(s) skipped (a server stopped mid-write)")
    if win.corrupt_lines:
        notes.append(
            f"{win.corrupt_lines} corrupt line(s) skipped (not a valid record), e.g. "
            + " | ".join(win.corrupt_examples)
        )
    if win.unknown_key_lines:
        # Not corruption: a newer server's optional keys (serve/records.py, the format rule).
        names = sorted(k for k, _ in win.unknown_keys.most_common(10))
        more = len(win.unknown_keys) - len(names)
        notes.append(
            f"{win.unknown_key_lines} record(s) carry fields this version does not know: "
            + ", ".join(names)
            + (f" and {more} more" if more else "")
            + "; ignored"
        )
    if win.newer_formats:
        formats = ", ".join(str(v) for v in sorted(win.newer_formats))
        notes.append(
            f"{sum(win.newer_formats.values())} record(s) of a newer log format ({formats}) "
            f"skipped: this version reads log format {LOG_FORMAT}; upgrade pomlia to read them"
        )
    if win.short_batches:
        notes.append(
            f"{win.short_batches} batch request(s) with fewer records than images (a torn or "
            "corrupt line): each counted as one request, its missing images not at all"
        )
    for item in win.unreadable_files:
        notes.append(f"log file not readable: {item}")
    if win.other_models:
        what = ", ".join(f"'{k}' ({v})" for k, v in win.other_models.most_common(5))
        notes.append(f"records of other models in this model's log folder skipped: {what}")
    if win.other_versions:
        what = ", ".join(f"{k} ({v})" for k, v in win.other_versions.most_common(5))
        notes.append(
            f"predictions of other model versions not tested (the reference is for {version}): "
            f"{what}"
        )
    return notes + label_notes(win.labels, timedelta(seconds=win.label_lookback_s))


def _volume(per_hour: Counter[str]) -> list[list[Any]]:
    """Predictions per hour: [[hour ISO, count], ...]."""
    return [[f"{h}:00", n] for h, n in sorted(per_hour.items())]


def build_report(
    target: Target,
    ref: Reference,
    win: LogWindow,
    outcome: CheckOutcome | None,
    *,
    alpha: float,
) -> dict[str, Any]:
    """The JSON report (its fields: ``docs/guide/monitor.md``, "Reports")."""
    notes = _log_notes(win, ref.model_version)
    tests = outcome.tests if outcome else []
    status = "empty"
    if outcome is not None:
        notes += outcome.notes
        status = "alarm" if outcome.alarm else "ok"
    else:
        notes.append("no predictions of this model version in the window: nothing to test")
    return {
        "format": FORMAT,
        "model": target.model.name,
        "model_id": target.model.id,
        # The slot asked for, whose champion `model` was at this run (None: the model itself).
        "slot": target.slot,
        "deployment_id": target.deployment_id,
        "model_version": ref.model_version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "window": {"since": win.since.isoformat(), "until": win.until.isoformat()},
        "alpha": alpha,
        "status": status,
        "alarm": status == "alarm",
        "reasons": [f"{t.name} (p={t.p_value:.3g})" for t in tests if t.rejected],
        "reference": {
            "source": ref.source,
            "split": ref.split,
            "n": ref.n,
            "accuracy": ref.accuracy,
            "fingerprint_kind": ref.fingerprint_kind,
            "created_at": ref.created_at,
            "task_type": ref.task_type,
        },
        "log": _log_summary(win),
        "volume": {"predictions": win.n_predictions, "per_hour": _volume(win.per_hour)},
        "tests": [t.to_dict() for t in tests],
        "performance": outcome.performance if outcome else None,
        "quality": outcome.quality if outcome else {"warnings": []},
        "notes": notes,
    }
