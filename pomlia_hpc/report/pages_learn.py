"""Report pages about learning: studies (best-so-far curves, trial tables with failures and
their causes), models with their lineage, deployments. Monitor history and pipelines are in
:mod:`pomlia_hpc.report.pages_ops`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pomlia_hpc.automl.records import config_summary, job_run_cost_s
from pomlia_hpc.registry import (
    Dataset,
    DatasetVersion,
    Deployment,
    Job,
    LoopRun,
    Model,
    Registry,
    RetrainRequest,
    Run,
    Task,
)
from pomlia_hpc.report import figures
from pomlia_hpc.report.html import (
    NA,
    cut,
    esc,
    is_number,
    metric_with_n,
    png,
    status_span,
    table,
    utc_text,
)
from pomlia_hpc.vocab import METRICS
from pomlia_hpc.workspace import Workspace

#: Trials listed per study (the newest); the curve shows all of them.
MAX_TRIALS = 200
#: Studies shown in full, with their best-so-far curve and trial table: the newest (by their
#: newest trial). Each costs a figure (~0.4 s of matplotlib, ~30 KB of PNG) and up to
#: :data:`MAX_TRIALS` table rows, so the page keeps its size however many studies the registry
#: holds (1,250 studies were a 37 MB page built in 5 minutes); ``pomlia report --studies N``
#: shows another number.
MAX_STUDIES = 20
#: Studies listed in the page's overview table, one row each (the newest); older ones are
#: counted below it.
MAX_STUDY_ROWS = 500
#: Runs read per query when the page sums up every study (a run's metrics hold its history).
_BATCH = 2000


@dataclass
class _Study:
    """One study's overview row, summed up over its runs in id order."""

    key: str  # its runs' ``study``; "" for runs without one (None or "")
    task_id: int | None  # its first run's
    trials: int = 0
    crashed: int = 0
    best: float | None = None
    best_n: int | None = None  # the validation images the best was computed on
    newest: int = 0  # its newest run's id
    # Each run's (objective, crashed) for the curve: only for a study shown in full.
    points: list[tuple[float | None, bool]] | None = None


def studies_page(
    registry: Registry, workspace: Workspace, folder: Path, max_studies: int = MAX_STUDIES
) -> str | None:
    """Every study's trials, crashes and best validation metric (the newest
    :data:`MAX_STUDY_ROWS`, or ``max_studies`` if more), then the newest ``max_studies``
    studies in full: their best-so-far curve and newest :data:`MAX_TRIALS` trials. Reads the
    runs in batches, so its memory and the page's size do not grow with the number of runs or
    studies."""
    key = func.coalesce(Run.study, "")
    with registry.session() as s:
        newest = func.max(Run.id)
        order = s.execute(select(key, newest).group_by(key).order_by(newest.desc())).all()
        if not order:
            return None
        full = {k for k, _ in order[: max(max_studies, 0)]}
        # Listed: the newest MAX_STUDY_ROWS, or more when more are asked for in full (both
        # are the newest, so the larger holds the other).
        listed = {k for k, _ in order[: max(MAX_STUDY_ROWS, max_studies)]}
        studies = _sum_up(s, listed, full)
        tasks = {t.id: t for t in s.scalars(select(Task))}
        for t in tasks.values():
            s.expunge(t)
        data = dict(
            s.execute(
                select(DatasetVersion.id, Dataset.name + "@" + DatasetVersion.version).join(
                    Dataset, Dataset.id == DatasetVersion.dataset_id
                )
            ).all()
        )
    overview, parts = [], []
    # Newest first, by their newest trial (``order``), as the page says; the dict of studies
    # is in the order of their first run.
    for st in (studies[k] for k, _ in order if k in studies):
        task = tasks.get(st.task_id or -1)
        metric = task.metric if task else "metric"
        name = st.key or "(no study)"
        best = f"{metric} {metric_with_n(st.best, st.best_n)}" if st.best is not None else NA
        overview.append([name, task.name if task else "", st.trials, st.crashed, best])
        if st.points is not None:
            about = (
                f"study {name}: task {task.name}, data {data.get(task.dataset_version_id, '?')}"
                if task
                else f"study {name}"
            )
            parts.append(_study_section(registry, st, name, metric, about))
    head = "<h2>Studies</h2>" + table(
        ["study", "task", "trials", "crashed", "best validation metric"], overview
    )
    older = len(order) - len(listed)
    each = f", each with its best-so-far curve and newest {MAX_TRIALS} trials."
    if not parts:
        said = "No study is shown in full (<code>pomlia report --studies N</code> shows the "
        said += f"newest N, each with its best-so-far curve and newest {MAX_TRIALS} trials)."
    elif len(parts) == len(order):
        said = "Every study is shown in full below" + each
    else:
        said = f"The newest {len(parts)} of {len(order):,} studies (by their newest trial) are"
        said += " shown in full below (<code>pomlia report --studies N</code> shows N)" + each
    head += (
        f"<p class='muted'>{said}"
        + (f" {older:,} older stud{'y is' if older == 1 else 'ies are'} not listed." * (older > 0))
        + " A study's trials: <code>pomlia runs list --study NAME</code>.</p>"
    )
    return head + "".join(parts)


def _sum_up(s: Session, listed: set[str], full: set[str]) -> dict[str, _Study]:
    """The studies named in ``listed`` summed up (those in ``full`` with their curve's
    points), reading the runs in id order, :data:`_BATCH` at a time."""
    key = func.coalesce(Run.study, "")
    out: dict[str, _Study] = {}
    q = select(Run.id, key, Run.task_id, Run.status, Run.metrics).where(key.in_(listed))
    last = 0
    while True:
        rows = s.execute(q.where(Run.id > last).order_by(Run.id).limit(_BATCH)).all()
        for run_id, study, task_id, status, metrics in rows:
            st = out.get(study)
            if st is None:
                st = out[study] = _Study(study, task_id, points=[] if study in full else None)
            # An undefined objective (None, NaN: an AUC of one class) is no point on the
            # curve and no best; its cell says n/a.
            value = _value(status, metrics)
            st.trials += 1
            st.crashed += status == "crashed"
            st.newest = run_id
            if value is not None and (st.best is None or value > st.best):
                st.best = value
                st.best_n = ((metrics or {}).get("val") or {}).get("n")
            if st.points is not None:
                st.points.append((value, status == "crashed"))
        if len(rows) < _BATCH:
            return out
        last = rows[-1][0]


def _study_section(registry: Registry, st: _Study, name: str, metric: str, title: str) -> str:
    """A study's heading, best-so-far curve (titled ``title``) and table of its newest
    :data:`MAX_TRIALS`."""
    points = st.points or []
    # The task metrics (accuracy, AUC, F1) run from 0 to 1: the axis shows that whole range,
    # so one trial or equal trials do not blow rounding noise up to the whole axis.
    bounds = (0.0, 1.0) if metric in METRICS else None
    curve = figures.best_so_far(
        [p[0] for p in points], [p[1] for p in points], metric, title, bounds
    )
    with registry.session() as s:
        members = list(
            s.scalars(
                select(Run)
                .where(func.coalesce(Run.study, "") == st.key)
                .order_by(Run.id.desc())
                .limit(MAX_TRIALS)
            )
        )[::-1]
        job_ids = [r.job_id for r in members if r.job_id]
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(job_ids)))}
        for obj in (*members, *jobs.values()):
            s.expunge(obj)
    rows = []
    for r in members:
        m = r.metrics or {}
        test = m.get("test") or {}
        job = jobs.get(r.job_id or -1)
        cause = m.get("cause") or (r.error or "").strip().splitlines()[-1:] or [""]
        rows.append(
            [
                str(r.id),
                esc(config_summary(r.config or {})),
                esc(_epochs(m.get("epochs", r.budget))),
                status_span(r.status),
                esc(metric_with_n(m.get("objective"), (m.get("val") or {}).get("n"))),
                esc(metric_with_n(test.get(metric), test.get("n"))),
                esc(_num(job_run_cost_s(r, job), 1)),  # as `runs list` costs it
                # The registry's job id, as `runs list` and `jobs show` name it; the
                # scheduler's id (a Slurm job id, a local pid) only in its own column.
                esc(f"{job.id} {job.state}" if job else ""),
                esc(job.scheduler_id if job else ""),
                esc(cut(cause if isinstance(cause, str) else cause[0], 300)),
            ]
        )
    head = ["run", "configuration", "epochs", "status", f"val {metric}", f"test {metric}"]
    return (
        f"<h2>Study {esc(name)}</h2>"
        + png(curve, f"best so far, study {name}", 560)
        + table(
            [*head, "cost (s)", "job", "scheduler id", "failure cause"],
            rows,
            raw=True,
        )
    )


def _value(status: str, metrics: Any) -> float | None:
    """A run's validation metric: None when it crashed, runs or has none defined."""
    value = (metrics or {}).get("objective") if isinstance(metrics, dict) else None
    return float(value) if status == "ok" and is_number(value) else None


def _num(x: Any, digits: int = 3) -> str:
    """A number (a cost in seconds, with ``digits=1``) as ``runs list`` shows it; metrics
    go through :func:`~pomlia_hpc.report.html.metric_text` (n/a when undefined)."""
    return f"{x:.{digits}f}" if is_number(x) else ""


def _epochs(x: Any) -> str:
    """Epochs as ``runs list`` shows them: a whole number without decimals. A crashed run
    has only its budget (a float: ``1.0``) where a finished one records ``epochs`` (``1``)."""
    if not isinstance(x, int | float) or isinstance(x, bool):
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


#: Models listed on the Models page (the newest), and deployments below them: every row ever
#: made the page grow for good (a nightly loop adds a model and a deployment a day).
MAX_MODEL_ROWS = 200
MAX_DEPLOYMENT_ROWS = 100


def models_page(registry: Registry, workspace: Workspace, folder: Path) -> str | None:
    """The newest :data:`MAX_MODEL_ROWS` models with their lineage (oldest of them first), then
    the newest :data:`MAX_DEPLOYMENT_ROWS` deployments; each table says how many older rows it
    leaves out and where to see them all."""
    with registry.session() as s:
        n_models = int(s.scalar(select(func.count()).select_from(Model)) or 0)
        n_deps = int(s.scalar(select(func.count()).select_from(Deployment)) or 0)
        models = list(s.scalars(select(Model).order_by(Model.id.desc()).limit(MAX_MODEL_ROWS)))
        deps = list(
            s.scalars(select(Deployment).order_by(Deployment.id.desc()).limit(MAX_DEPLOYMENT_ROWS))
        )
        models.reverse()
        deps.reverse()
        wanted = {m.id for m in models} | {d.model_id for d in deps}
        names = dict(s.execute(select(Model.id, Model.name).where(Model.id.in_(wanted))).all())
        task_ids = {m.task_id for m in models if m.task_id is not None}
        tasks = dict(s.execute(select(Task.id, Task.name).where(Task.id.in_(task_ids))).all())
        for obj in (*models, *deps):
            s.expunge(obj)
    if not models:
        return None
    reasons = _loop_reasons(registry, [(m.lineage or {}).get("loop_run_id") for m in models])
    rows = []
    for m in models:
        export = (m.card or {}).get("export") or {}
        rows.append(
            [
                esc(m.name),
                esc(tasks.get(m.task_id or -1, "")),
                esc(m.run_id or ""),
                lineage_html(m.lineage or {}, reasons),
                esc(export.get("version", "")),
                esc(utc_text(m.created_at)),
            ]
        )
    body = "<h2>Models and lineage</h2>" + table(
        ["model", "task", "run", "lineage", "exported bundle", "created (UTC)"], rows, raw=True
    )
    body += _left_out(len(models), n_models, "models", f"pomlia model list --limit {n_models}")
    if deps:
        body += "<h2>Deployments</h2>" + table(
            ["id", "model", "status", "address", "bundle", "job", "created (UTC)"],
            [
                [
                    d.id,
                    names.get(d.model_id, d.model_id),
                    d.status,
                    d.address or "",
                    d.bundle_path,
                    d.job_id or "",
                    utc_text(d.created_at),
                ]
                for d in deps
            ],
        )
        every = f"each has its folder under {workspace.path('models')}/MODEL/deploy/"
        body += _left_out(len(deps), n_deps, "deployments", every, code=False)
    return body


def _left_out(listed: int, total: int, what: str, every: str, *, code: bool = True) -> str:
    """The line under a table of the newest ``listed`` of ``total`` rows: how many older ones
    it leaves out and ``every``, how to see them all (a command when ``code``); nothing when
    it lists them all."""
    older = total - listed
    if older <= 0:
        return ""
    how = f"<code>{esc(every)}</code>" if code else esc(every)
    return (
        f"<p class='muted'>The newest {listed:,} of {total:,} {what}; {older:,} older not "
        f"listed: {how}.</p>"
    )


def _loop_reasons(registry: Registry, ids: list[Any]) -> dict[int, str]:
    """Loop run id → why it ran (its trigger, and the retrain request's reason), for the loop
    runs ``ids`` (the listed models' ``loop_run_id``; anything but an int is skipped)."""
    wanted = {i for i in ids if isinstance(i, int) and not isinstance(i, bool)}
    if not wanted:
        return {}
    with registry.session() as s:
        runs = list(s.scalars(select(LoopRun).where(LoopRun.id.in_(wanted))))
        request_ids = {r.request_id for r in runs if r.request_id is not None}
        requests = dict(
            s.execute(
                select(RetrainRequest.id, RetrainRequest.reason).where(
                    RetrainRequest.id.in_(request_ids)
                )
            ).all()
        )
        return {
            r.id: f"loop run {r.id}, {r.trigger}"
            + (f": {requests[r.request_id]}" if r.request_id in requests else "")
            for r in runs
        }


#: A line of the lineage: its label, its text, and the lineage keys it shows.
_Line = tuple[str, str, tuple[str, ...]]


def _short(value: Any) -> str:
    """A lineage value as one line of text: a scalar as itself, anything else as compact JSON
    (the page cuts it to 160 characters), so a value of any kind is shown rather than dropped."""
    if isinstance(value, str | int | float | bool):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str, separators=(", ", ": "))


def _data_and_task(lin: dict[str, Any]) -> list[_Line]:
    """The data and task lines: ``dataset`` (or ``dataset_version``) with the version and its
    id when recorded beside it; the task by name and id, with the metric."""
    lines: list[_Line] = []
    parts: list[str] = []
    keys: list[str] = []
    if lin.get("dataset"):
        parts.append(str(lin["dataset"]))
        keys.append("dataset")
    version = lin.get("dataset_version")
    if version:
        keys.append("dataset_version")
        if not parts:
            parts.append(str(version))
        elif not str(lin["dataset"]).endswith(f"@{version}"):  # a ref names its version: once
            parts.append(f"version {version}")
    if lin.get("dataset_version_id") is not None:
        parts.append(f"version id {lin['dataset_version_id']}")
        keys.append("dataset_version_id")
    if parts:
        lines.append(("data", ", ".join(parts), tuple(keys)))
    task = [k for k in ("task", "task_id", "metric") if lin.get(k) not in (None, "")]
    if task:
        text = ", ".join(
            f"id {lin[k]}"
            if k == "task_id"
            else f"metric {lin[k]}"
            if k == "metric"
            else str(lin[k])
            for k in task
        )
        lines.append(("task", text, (*task,)))
    return lines


def _known_lines(lin: dict[str, Any], reasons: dict[int, str]) -> list[_Line]:
    """The labelled lines of the keys the page knows, each with the keys it shows."""
    lines: list[_Line] = []
    parents = [k for k in ("champion", "parent") if lin.get(k)]
    if parents:
        first = lin[parents[0]]
        lines.append(("parent model", str(first), tuple(k for k in parents if lin[k] == first)))
    lines += _data_and_task(lin)
    epochs = f", {lin['epochs']} epochs" if lin.get("epochs") else ""
    if lin.get("study"):
        run = f", best run {lin['run_id']}" if lin.get("run_id") is not None else ""
        lines.append(("study", f"{lin['study']}{run}{epochs}", ("study", "run_id", "epochs")))
    elif lin.get("run_id") is not None:
        lines.append(("run", f"{lin['run_id']}{epochs}", ("run_id", "epochs")))
    if isinstance(lin.get("config"), dict):
        lines.append(("config", config_summary(lin["config"]), ("config",)))
    loop_run = lin.get("loop_run_id")
    if loop_run is not None:
        why = reasons.get(loop_run, f"loop run {loop_run}")
        lines.append(("reason", why, ("loop_run_id",)))
    if lin.get("encoder_id") is not None:
        lines.append(("encoder", f"id {lin['encoder_id']}", ("encoder_id",)))
    code, git = lin.get("code_version"), lin.get("git_commit")
    if isinstance(code, dict) and set(code) <= {"version", "commit"}:
        commit = str(code.get("commit") or git or "")[:8]
        text = f"{code.get('version', '?')}" + (f" ({commit})" if commit else "")
        # git_commit counts as shown only when it is the commit given (or the only one).
        same = not code.get("commit") or not git or git == code["commit"]
        lines.append(("code", text, ("code_version", "git_commit") if same else ("code_version",)))
    elif isinstance(code, str | int | float) and code:
        text = " ".join(str(x) for x in (code, git) if x)
        lines.append(("code", text, ("code_version", "git_commit")))
    elif git:
        lines.append(("code", str(git), ("git_commit",)))
    return lines


def lineage_html(lin: dict[str, Any], reasons: dict[int, str] | None = None) -> str:
    """A model's lineage as short labelled lines (escaped HTML): parent model, data, task,
    study and run, why a loop made it, encoder, code version; every other key with a value
    as ``key: value`` (non-scalars as compact JSON), so nothing recorded is left out. Each
    line is cut to 160 characters."""
    lines = _known_lines(lin, reasons or {})
    shown = {key for _, _, keys in lines for key in keys}
    for key, value in lin.items():
        if key not in shown and value not in (None, "", [], {}):
            lines.append((key.replace("_", " "), _short(value), (key,)))
    if not lines:
        return "<span class='muted'>none recorded</span>"
    return "<br>".join(
        f"<span class='muted'>{esc(k)}:</span> {esc(cut(v, 160))}" for k, v, _ in lines
    )
