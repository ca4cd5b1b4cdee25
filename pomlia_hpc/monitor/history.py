"""Reading recorded monitoring reports back (``pomlia monitor show`` / ``history``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.monitor.reference import resolve_model_id
from pomlia_hpc.registry import MonitorReport, Registry
from pomlia_hpc.registry.lookup import check_limit
from pomlia_hpc.times import as_utc

#: What a report shows in place of the p-value of a test that was not tested.
NOT_TESTED = "not tested"

#: The report format written now. /2: a multi-label model's accuracy is label-wise (the
#: task's ACC; the kind is recorded, ``performance.accuracy_kind``) and the refused share is
#: per request (``quality.rejected_share_unit``). Reports of /1 are still read: their
#: multi-label accuracy was exact match over all labels (about 0 for 14 labels) and their
#: refused share per image, so neither is comparable with /2's and neither is drawn beside it.
FORMAT = "pomlia-monitor-report/2"
READ_FORMATS = ("pomlia-monitor-report/1", FORMAT)


def is_multi_label(registry: Registry, model_id: int | None) -> bool:
    """Whether model ``model_id`` is a multi-label one (its card's task type)."""
    from pomlia_hpc.registry import Model

    if model_id is None:
        return False
    with registry.session() as s:
        model = s.get(Model, model_id)
        card = model.card if model is not None else {}
    return (card.get("task") or {}).get("type") == "multi-label"


def comparable_accuracy(metrics: Mapping[str, Any] | None, multi_label: bool) -> float | None:
    """The accuracy a recorded report (its registry ``metrics``) holds, or None where it has
    none or one not comparable with today's: a multi-label model's report of format /1
    (:data:`FORMAT`; /1 recorded no format in the metrics) held exact-match accuracy."""
    metrics = metrics or {}
    acc = (metrics.get("performance") or {}).get("accuracy")
    if multi_label and metrics.get("format") is None:
        return None
    return float(acc) if isinstance(acc, int | float) else None


@dataclass(frozen=True)
class ReportedMetric:
    """The metric a recorded report's performance test compared: the task's (AUC, macro F1)
    where it was tested, else accuracy (an accuracy task, a window where the task's metric was
    undefined, a reference without probabilities), with its value on the window's ``labels``
    and the reference's on its ``reference_n`` images. A value is None where undefined or
    not comparable (:func:`comparable_accuracy`)."""

    name: str
    value: float | None
    labels: int
    reference_value: float | None
    reference_n: int | None

    def text(self) -> str:
        """``auc 0.398 (n=60)``: the name, the window's value and its label count."""
        value = f"{self.value:.3f}" if self.value is not None else "n/a"
        return f"{self.name} {value} (n={self.labels})"


def tested_metric(metrics: Mapping[str, Any] | None, multi_label: bool) -> ReportedMetric | None:
    """What a recorded report (its registry ``metrics``) tested on feedback labels, None for
    a report without labels. Reports written before the task's metric was tested name no
    metric: they tested accuracy."""
    perf = (metrics or {}).get("performance") or {}
    labels = perf.get("labels")
    if not isinstance(labels, int) or labels <= 0:
        return None
    name = str(perf.get("metric") or "acc")
    got = perf.get("metric_test")
    if name != "acc" and isinstance(got, Mapping):
        return ReportedMetric(
            name,
            _number(got.get("value")),
            labels,
            _number(got.get("reference_value")),
            _count(got.get("reference_n")),
        )
    acc = comparable_accuracy(metrics, multi_label)
    ref = perf.get("reference_accuracy", perf.get("validation_accuracy"))
    return ReportedMetric(
        "acc",
        acc,
        labels,
        None if acc is None else _number(ref),
        _count(perf.get("reference_n", perf.get("validation_n"))),
    )


def _number(v: Any) -> float | None:
    """A recorded number, None for none (JSON's null for NaN) or anything else."""
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def show_time(value: Any) -> str:
    """A recorded time (ISO 8601 text, as a report's window holds it, or a datetime) as
    ``YYYY-MM-DD HH:MM:SS UTC``: whole seconds, in UTC (a time without a zone is UTC, as
    the monitor writes it); ``-`` for none, the text itself when it is not a time."""
    if value is None or value == "":
        return "-"
    when = as_utc(value)
    if when is None:
        return str(value)
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


def is_tested(test: Mapping[str, Any]) -> bool:
    """Whether a recorded test (an entry of a report's ``tests``) took part in the alarm. A
    test given no share of alpha (``weight`` 0: accuracy from too few labels) is reported but
    not tested, so its p-value means nothing and is shown nowhere. Older records without a
    weight were all tested."""
    weight = test.get("weight")
    return not (isinstance(weight, int | float) and weight <= 0)


def get_report(registry: Registry, report_id: int) -> tuple[MonitorReport, dict[str, Any]]:
    """The registry row of report ``report_id`` and its JSON file's content."""
    with registry.session() as s:
        row = s.get(MonitorReport, report_id)
        if row is None:
            last = s.scalar(select(MonitorReport.id).order_by(MonitorReport.id.desc()).limit(1))
            raise NotFoundError(
                f"monitor report {report_id} is not in the registry "
                f"(newest: {last if last is not None else 'none'})"
            )
    path = Path(row.report_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotFoundError(f"report {report_id}: its file {path} is gone") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"report {report_id}: {path} is not readable JSON ({exc})") from exc
    return row, data


def list_reports(registry: Registry, ref: str, limit: int = 20) -> list[MonitorReport]:
    """The newest ``limit`` reports of model ``ref`` (name, id or ``deployment:ID``), newest
    first. A ``limit`` below 1 is refused, as ``runs list`` does (0 listed nothing without
    saying why; -1 listed everything)."""
    check_limit(limit)
    model_id, deployment_id = resolve_model_id(registry, ref)
    with registry.session() as s:
        q = select(MonitorReport).where(MonitorReport.model_id == model_id)
        if deployment_id is not None:
            q = q.where(MonitorReport.deployment_id == deployment_id)
        return list(s.scalars(q.order_by(MonitorReport.id.desc()).limit(limit)))


def report_window(metrics: Mapping[str, Any] | None) -> tuple[datetime, datetime] | None:
    """The window ``[since, until)`` a recorded report tested (UTC), None if not recorded."""
    window = (metrics or {}).get("window") or {}
    try:
        since = datetime.fromisoformat(str(window["since"]))
        until = datetime.fromisoformat(str(window["until"]))
    except (KeyError, ValueError):
        return None
    return _utc(since), _utc(until)


def window_gaps(windows: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The spans between the earliest start and the latest end of ``windows`` that none of
    them covers, in time order: nights a chain never tested (a job that failed, a chain
    ended and scheduled again later). Overlaps and repeats (a rerun of one night) are none."""
    gaps = []
    covered: datetime | None = None
    for since, until in sorted(windows):
        if covered is not None and since > covered:
            gaps.append((covered, since))
        covered = until if covered is None else max(covered, until)
    return gaps


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
