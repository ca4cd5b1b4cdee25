"""Report pages about operations: the monitor history of each model (a chart, then one row per
report with its status, window, volume, labels and tests, linked to the report's own page) and
the pipelines (each stage's record, in the order the pipeline runs them)."""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from sqlalchemy import select

from pomlia_hpc.monitor.history import NOT_TESTED, is_tested, tested_metric
from pomlia_hpc.registry import Model, MonitorReport, Registry
from pomlia_hpc.report import figures
from pomlia_hpc.report.html import (
    NA,
    cut,
    esc,
    is_number,
    metric_text,
    png,
    relative_href,
    status_span,
    table,
    utc_text,
)
from pomlia_hpc.workspace import Workspace

#: The file of a pipeline's last run (written by the pipeline room; read here as plain JSON,
#: since the report may not import the pipeline room): ``order`` lists its stages in order.
RUN_FILE = "run.json"


#: Reports listed per model in the monitor page's table (the newest); its chart shows all.
MAX_REPORT_ROWS = 100


def monitor_page(registry: Registry, workspace: Workspace, folder: Path) -> str | None:
    """Each model's monitor reports: a chart of all of them, then a table of the newest
    :data:`MAX_REPORT_ROWS`, each linked to the report's own page."""
    with registry.session() as s:
        reports = list(s.scalars(select(MonitorReport).order_by(MonitorReport.id)))
        names = {m.id: m.name for m in s.scalars(select(Model))}
        for r in reports:
            s.expunge(r)
    if not reports:
        return None
    by_model: dict[str, list[MonitorReport]] = defaultdict(list)
    for r in reports:
        by_model[names.get(r.model_id or -1, f"deployment {r.deployment_id}")].append(r)
    parts = []
    for model, items in by_model.items():
        parts.append(f"<h2>Model {esc(model)}</h2>")
        chart = figures.figure_bytes(monitor_chart(items, f"monitor, {model}"))
        parts.append(png(chart, f"monitor history of {model}", 600))
        # The chart holds every report; the table the newest (a nightly or hourly monitor adds
        # thousands of rows a year: 9,000 made a 2 MB page), oldest first as before.
        listed = items[-MAX_REPORT_ROWS:]
        headers = ["report", "time (UTC)", "status", "window (UTC)", "predictions", "labels"]
        rows = [_report_row(r, utc_text(r.created_at), folder) for r in listed]
        parts.append(table([*headers, "tests", "page"], rows, raw=True))
        older = len(items) - len(listed)
        if older:
            every = f"pomlia monitor history {model} --limit {len(items)}"
            parts.append(
                f"<p class='muted'>The newest {len(listed)} of {len(items):,} reports; "
                f"{older:,} older not listed (the chart shows them all)"
                + (f": <code>{esc(every)}</code>" if model in names.values() else "")
                + ".</p>"
            )
    return "".join(parts)


#: Monitor numbers that are shares from 0 to 1, and those that count predictions.
_SHARES = ("accuracy", "share", "rate", "coverage", "auc", "f1_macro")
_COUNTS = ("predictions", "n", "labels", "requests")
#: The y labels of the panels of shares and of counts.
SHARE_UNIT = "share (0 to 1)"
COUNT_UNIT = "count (predictions, labels)"
#: The status of a report whose window held no predictions (``monitor run``): nothing was
#: measured, so its numbers are no points on the chart.
EMPTY = "empty"


def unit_of(key: str) -> str:
    """The y label, with its unit, of the chart panel that draws monitor number ``key``:
    numbers of one unit share a panel, any other number has a panel of its own."""
    if any(word in key for word in _SHARES):
        return SHARE_UNIT
    if key in _COUNTS:
        return COUNT_UNIT
    return key


def window_end(r: MonitorReport) -> datetime:
    """The end of the window report ``r`` covers (UTC; a naive time is taken as UTC), else
    (an old report without a window) when it was made: where the report belongs on a time
    axis, since a report of an old window can be made any time later."""
    win = (r.metrics or {}).get("window")
    until = win.get("until") if isinstance(win, dict) else None
    when = r.created_at
    if isinstance(until, str):
        # An unreadable window end: the report's own time still places it.
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(until)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def monitor_chart(items: list[MonitorReport], title: str) -> Figure:
    """A model's monitor reports as a chart over the end of each report's window (UTC): a
    panel of shares from 0 to 1 (accuracy), one of counts (predictions, labels) from 0, one
    for any other number; alarms and empty windows marked."""
    items = sorted(items, key=window_end)
    return figures.series_figure(
        [window_end(r) for r in items],
        monitor_panels([_numbers(r) for r in items]),
        [r.triggered for r in items],
        title,
        empty=[(r.metrics or {}).get("status") == EMPTY for r in items],
        limits={SHARE_UNIT: (0.0, 1.0), COUNT_UNIT: (0.0, None)},
        xlabel="end of the report's window (UTC)",
    )


def monitor_panels(
    values: list[dict[str, float]], most: int = 6
) -> dict[str, dict[str, list[float | None]]]:
    """The chart of a model's monitor reports (``values``: each report's numbers, oldest
    first) as panels: y label with its unit -> {number: value per report, None where the
    report has none}; at most ``most`` numbers."""
    keys = sorted({k for v in values for k in v})[:most]
    panels: dict[str, dict[str, list[float | None]]] = defaultdict(dict)
    for k in keys:
        panels[unit_of(k)][k] = [v.get(k) for v in values]
    return dict(panels)


def _is_num(v: Any) -> bool:
    """A finite number (NaN is no point on a chart, and is shown as n/a in a table)."""
    return is_number(v)


def _numbers(r: MonitorReport) -> dict[str, float]:
    """The numbers worth a chart line: the metrics' own, the accuracy on labelled feedback
    and the task's metric where the report tested it (AUC, macro F1)."""
    m = r.metrics or {}
    out = {k: float(v) for k, v in m.items() if _is_num(v)}
    perf = m.get("performance")
    if isinstance(perf, dict):
        for key in ("accuracy", "labels"):
            if _is_num(perf.get(key)):
                out[key] = float(perf[key])
    tested = tested_metric(m, multi_label=False)
    if tested is not None and tested.name != "acc" and tested.value is not None:
        out[tested.name] = tested.value
    return out


def _report_row(r: MonitorReport, time: str, folder: Path) -> list[str]:
    """One monitor report as readable, escaped cells (the registry keeps its summary)."""
    m = r.metrics or {}
    status = str(m.get("status") or ("alarm" if r.triggered else "ok"))
    win = m.get("window")
    window = (
        f"{utc_text(win.get('since'))} → {utc_text(win.get('until'))}"
        if isinstance(win, dict)
        else ""
    )
    predictions = m.get("predictions", m.get("n", ""))
    perf = m.get("performance") if isinstance(m.get("performance"), dict) else {}
    labels = ""
    if perf:
        labels = str(perf.get("labels", ""))
        if "accuracy" in perf:  # recorded, maybe undefined (no labels): n/a, never "nan"
            labels += f", accuracy {metric_text(perf['accuracy'])}"
        tested = tested_metric(m, multi_label=False)
        if tested is not None and tested.name != "acc":  # the task's metric decided
            labels += f", {tested.name} {metric_text(tested.value)} (tested)"
    elif "accuracy" in m:
        labels = f"accuracy {metric_text(m['accuracy'])}"
    return [
        esc(r.id),
        esc(time),
        status_span(status) + (" <span class='bad'>(alarm)</span>" if r.triggered else ""),
        esc(window),
        esc(predictions),
        esc(labels),
        _tests_html(r.drift or {}),
        _page_link(r.report_path, folder),
    ]


def _tests_html(drift: dict[str, Any]) -> str:
    """Each test as ``name p=0.012`` (rejected ones marked), one per line."""
    lines = []
    for name, t in drift.items():
        if isinstance(t, dict):
            p = t.get("p_value")
            if not is_tested(t):
                lines.append(esc(f"{name} {NOT_TESTED}"))
                continue
            text = f"{name} p={p:.3g}" if _is_num(p) else f"{name} (no p-value)"
            rejected = f"<span class='bad'>{esc(text)} rejected</span>"
            lines.append(rejected if t.get("rejected") else esc(text))
        elif isinstance(t, float | int) and not isinstance(t, bool):
            lines.append(esc(f"{name} {t:.3g}" if _is_num(t) else f"{name} {NA}"))
        else:
            lines.append(esc(cut(f"{name} {t}", 80)))
    return "<br>".join(lines) or "<span class='muted'>none</span>"


def _page_link(report_path: str | None, folder: Path) -> str:
    """A link to the report's own HTML page (next to its JSON), or why there is none. The link
    is relative to ``folder`` (where monitor.html is written), never an absolute ``file://``
    one: it still opens when the workspace's folders are moved or served over HTTP together
    (the default report folder, ``<home>/reports/html``, sits beside the monitor reports)."""
    if not report_path:
        return "<span class='muted'>no file</span>"
    page = Path(report_path).with_name("report.html")
    if not page.is_file():
        return f"<span class='muted'>{esc(page)} (missing)</span>"
    href = relative_href(page.resolve(), folder)
    return f"<a href='{esc(href)}'>report.html</a>"


#: Pipelines shown on the Pipelines page: the newest, by their last run (each a table of its
#: stages); every pipeline ever run made the page grow for good.
MAX_PIPELINES = 50


def _last_run(folder: Path) -> float:
    """When the pipeline in ``folder`` last ran (seconds since the epoch): its ``run.json``'s
    time of last change (each run rewrites it), else the folder's (a run of an older pomlia)."""
    for path in (folder / RUN_FILE, folder):
        with contextlib.suppress(OSError):
            return path.stat().st_mtime
    return 0.0


def pipelines_page(registry: Registry, workspace: Workspace, folder: Path) -> str | None:
    """The stage records of the newest :data:`MAX_PIPELINES` pipelines (by their last run),
    in name order; a line says how many older ones are left out and how to see one."""
    root = workspace.path("pipelines")
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not names:
        return None
    newest = set(sorted(names, key=lambda n: _last_run(root / n), reverse=True)[:MAX_PIPELINES])
    listed = [n for n in names if n in newest]
    parts = []
    for name in listed:
        rows = []
        for rec in stage_records(root / name):
            rows.append(
                [
                    esc(rec.get("stage", "")),
                    status_span(str(rec.get("status", ""))),
                    esc(utc_text(rec.get("started_at"), seconds=True)),
                    esc(utc_text(rec.get("ended_at"), seconds=True)),
                    esc(str(rec.get("key", ""))[:12]),
                    esc(cut(rec.get("error") or _short(rec.get("outputs")), 300)),
                ]
            )
        parts.append(f"<h2>Pipeline {esc(name)}</h2>")
        parts.append(
            table(
                ["stage", "status", "started (UTC)", "ended (UTC)", "key", "outputs / error"],
                rows,
                raw=True,
            )
        )
    older = len(names) - len(listed)
    if older:
        parts.append(
            f"<p class='muted'>The newest {len(listed):,} of {len(names):,} pipelines (by their "
            f"last run); {older:,} older not listed: <code>pomlia pipeline status NAME</code> "
            f"shows one, their folders are under {esc(root)}/.</p>"
        )
    return "".join(parts)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_records(folder: Path) -> list[dict[str, Any]]:
    """The stage records of the pipeline in ``folder``, in the order the pipeline runs its
    stages: the order its last run wrote, then (a run of an older pomlia) by start time."""
    records = []
    for f in (folder / "stages").glob("*.json"):
        rec = _read(f)
        records.append({**rec, "stage": rec.get("stage", f.stem)})
    order = _read(folder / RUN_FILE).get("order")
    rank = {str(n): i for i, n in enumerate(order)} if isinstance(order, list) else {}
    return sorted(
        records,
        key=lambda r: (rank.get(r["stage"], len(rank)), str(r.get("started_at", "")), r["stage"]),
    )


def _short(d: dict[str, Any] | None) -> str:
    return json.dumps(d or {}, default=str)
