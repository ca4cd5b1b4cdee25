"""Report pages about learning and operations: studies (best-so-far curves, trial tables
with failures and their causes), models with lineage, deployments, monitor history and
pipelines."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import select

from pomlia_hpc.automl.records import config_summary
from pomlia_hpc.registry import Deployment, Job, Model, MonitorReport, Registry, Run, Task
from pomlia_hpc.report import figures
from pomlia_hpc.report.html import esc, png, status_span, table
from pomlia_hpc.workspace import Workspace

#: Trials listed per study (the newest); the curve shows all of them.
MAX_TRIALS = 200


def studies_page(registry: Registry, workspace: Workspace) -> str | None:
    with registry.session() as s:
        runs = list(s.scalars(select(Run).order_by(Run.id)))
        tasks = {t.id: t for t in s.scalars(select(Task))}
        jobs = {
            j.id: j
            for j in s.scalars(select(Job).where(Job.id.in_([r.job_id for r in runs if r.job_id])))
        }
        for obj in (*runs, *tasks.values(), *jobs.values()):
            s.expunge(obj)
    if not runs:
        return None
    by_study: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_study[r.study or "(no study)"].append(r)
    overview, parts = [], []
    for study, members in by_study.items():
        task = tasks.get(members[0].task_id or -1)
        metric = task.metric if task else "metric"
        objectives = [
            (r.metrics or {}).get("objective") if r.status == "ok" else None for r in members
        ]
        ok = [o for o in objectives if o is not None]
        crashed = sum(1 for r in members if r.status == "crashed")
        overview.append(
            [study, task.name if task else "", len(members), crashed, max(ok) if ok else ""]
        )
        parts.append(f"<h2>Study {esc(study)}</h2>")
        crashed_flags = [r.status == "crashed" for r in members]
        curve = figures.best_so_far(objectives, crashed_flags, metric, f"study {study}")
        parts.append(png(curve, f"best so far, study {study}", 560))
        rows = []
        for r in members[-MAX_TRIALS:]:
            m = r.metrics or {}
            job = jobs.get(r.job_id or -1)
            cause = m.get("cause") or (r.error or "").strip().splitlines()[-1:] or [""]
            rows.append(
                [
                    str(r.id),
                    esc(config_summary(r.config or {})),
                    esc(m.get("epochs", r.budget or "")),
                    status_span(r.status),
                    esc(_num(m.get("objective"))),
                    esc(_num((m.get("test") or {}).get(metric))),
                    esc(_num(r.cost_s)),
                    esc(f"{job.scheduler_id} {job.state}" if job else ""),
                    esc(cause if isinstance(cause, str) else cause[0])[:300],
                ]
            )
        parts.append(
            table(
                [
                    "run",
                    "configuration",
                    "epochs",
                    "status",
                    f"val {metric}",
                    f"test {metric}",
                    "cost (s)",
                    "job",
                    "failure cause",
                ],
                rows,
                raw=True,
            )
        )
    head = "<h2>Studies</h2>" + table(["study", "task", "trials", "crashed", "best val"], overview)
    return head + "".join(parts)


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) and not isinstance(x, bool) else ""


def models_page(registry: Registry, workspace: Workspace) -> str | None:
    with registry.session() as s:
        models = list(s.scalars(select(Model).order_by(Model.id)))
        deps = list(s.scalars(select(Deployment).order_by(Deployment.id)))
        tasks = {t.id: t.name for t in s.scalars(select(Task))}
        for obj in (*models, *deps):
            s.expunge(obj)
    if not models:
        return None
    names = {m.id: m.name for m in models}
    rows = []
    for m in models:
        lin = m.lineage or {}
        export = (m.card or {}).get("export") or {}
        lineage = "; ".join(
            f"{k}={v}"
            for k, v in lin.items()
            if k
            in (
                "dataset",
                "dataset_version",
                "study",
                "run_id",
                "encoder_id",
                "config_key",
                "code_version",
                "git_commit",
                "parent",
            )
        )
        rows.append(
            [
                m.name,
                tasks.get(m.task_id or -1, ""),
                str(m.run_id or ""),
                lineage or json.dumps(lin)[:200],
                export.get("version", ""),
                f"{m.created_at:%Y-%m-%d %H:%M}",
            ]
        )
    body = "<h2>Models and lineage</h2>" + table(
        ["model", "task", "run", "lineage", "exported bundle", "created"], rows
    )
    if deps:
        body += "<h2>Deployments</h2>" + table(
            ["id", "model", "status", "address", "bundle", "job", "created"],
            [
                [
                    d.id,
                    names.get(d.model_id, d.model_id),
                    d.status,
                    d.address or "",
                    d.bundle_path,
                    d.job_id or "",
                    f"{d.created_at:%Y-%m-%d %H:%M}",
                ]
                for d in deps
            ],
        )
    return body


def monitor_page(registry: Registry, workspace: Workspace) -> str | None:
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
        times = [f"{r.created_at:%Y-%m-%d %H:%M}" for r in items]
        series: dict[str, list[float | None]] = defaultdict(list)
        keys = sorted({k for r in items for k, v in (r.metrics or {}).items() if _is_num(v)})
        for r in items:
            for k in keys[:6]:
                v = (r.metrics or {}).get(k)
                series[k].append(float(v) if isinstance(v, int | float) else None)
        parts.append(f"<h2>Model {esc(model)}</h2>")
        chart = figures.series(times, series, [r.triggered for r in items], f"monitor, {model}")
        parts.append(png(chart, f"monitor history of {model}", 600))
        parts.append(
            table(
                ["report", "time", "triggered", "drift", "metrics", "file"],
                [
                    [
                        r.id,
                        t,
                        "yes" if r.triggered else "no",
                        _short(r.drift),
                        _short(r.metrics),
                        r.report_path,
                    ]
                    for r, t in zip(items, times, strict=True)
                ],
            )
        )
    return "".join(parts)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _short(d: dict[str, Any] | None) -> str:
    text = json.dumps(d or {}, default=str)
    return text if len(text) <= 240 else text[:237] + "..."


def pipelines_page(registry: Registry, workspace: Workspace) -> str | None:
    root = workspace.path("pipelines")
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not names:
        return None
    parts = []
    for name in names:
        rows = []
        for f in sorted((root / name / "stages").glob("*.json")):
            rec = json.loads(f.read_text())
            rows.append(
                [
                    esc(rec.get("stage", f.stem)),
                    status_span(str(rec.get("status", ""))),
                    esc(str(rec.get("started_at", ""))),
                    esc(str(rec.get("ended_at", ""))),
                    esc(str(rec.get("key", ""))[:12]),
                    esc(rec.get("error") or _short(rec.get("outputs")))[:300],
                ]
            )
        parts.append(f"<h2>Pipeline {esc(name)}</h2>")
        parts.append(
            table(["stage", "status", "started", "ended", "key", "outputs / error"], rows, raw=True)
        )
    return "".join(parts)
