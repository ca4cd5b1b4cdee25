"""The report's Studies page reads as `runs list` does: the registry's job ids, numbers."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.registry import DatasetVersion, Job, Recommendation, Registry, Run, Task
from pomlia_hpc.report import build_report
from pomlia_hpc.report.build import PAGES
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, row_task


@pytest.fixture
def studied(workspace: Workspace, reg: Registry) -> tuple[Workspace, Registry]:
    """A study of two finished trials, each run by a job whose scheduler id (a pid) is far
    from its registry id."""
    make_dataset(workspace, reg, "pneu", "pneumoniamnist", sizes=(24, 8, 16))
    with reg.session() as s:
        version = s.scalar(select(DatasetVersion.id).order_by(DatasetVersion.id.desc()))
        task = Task(name="pneu", dataset_version_id=version, metric="auc", task_type="binary")
        s.add(task)
        s.flush()
        for i, (objective, test, cost) in enumerate(((0, 0, 6.674), (1, 0.8889, 5.643))):
            job = Job(backend="local", scheduler_id=str(17571 + i), state="COMPLETED")
            s.add(job)
            s.flush()
            s.add(
                Run(
                    task_id=task.id,
                    study="st1",
                    config={"arch": "small_cnn"},
                    budget=1,
                    status="ok",
                    metrics={"objective": objective, "test": {"auc": test}, "epochs": 1},
                    cost_s=cost,
                    job_id=job.id,
                )
            )
    return workspace, reg


def _rows(page: str) -> list[list[str]]:
    """Each table row's cells as plain text (header cells included)."""
    out = []
    for row in re.findall(r"<tr>(.*?)</tr>", page, re.S):
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
        out.append([" ".join(html.unescape(re.sub(r"<[^>]+>", " ", c)).split()) for c in cells])
    return out


def test_the_job_column_is_the_registry_job_id(
    studied: tuple[Workspace, Registry], tmp_path: Path
) -> None:
    """The job column showed the scheduler's id (17571, a pid) where `runs list` and `jobs
    show` name the registry's job (1)."""
    ws, reg = studied
    res = build_report(reg, ws, tmp_path / "r")
    rows = _rows((res.folder / "studies.html").read_text())
    head = next(r for r in rows if "failure cause" in r)
    trials = [dict(zip(head, r, strict=True)) for r in rows if len(r) == len(head) and r != head]
    assert [t["job"] for t in trials] == ["1 COMPLETED", "2 COMPLETED"]
    assert [t["scheduler id"] for t in trials] == ["17571", "17572"]


def test_numbers_read_as_runs_list_shows_them(
    studied: tuple[Workspace, Registry], tmp_path: Path
) -> None:
    """`0`, `1`, `0.8889`, `6.674` and an unnamed "best val" 1: metrics now have 3 decimals,
    costs 1, and the best names its metric."""
    ws, reg = studied
    res = build_report(reg, ws, tmp_path / "r")
    rows = _rows((res.folder / "studies.html").read_text())
    overview = dict(zip(rows[0], rows[1], strict=True))
    assert overview["best validation metric"] == "auc 1.000"
    head = next(r for r in rows if "failure cause" in r)
    trials = [dict(zip(head, r, strict=True)) for r in rows if len(r) == len(head) and r != head]
    assert [t["val auc"] for t in trials] == ["0.000", "1.000"]
    assert [t["test auc"] for t in trials] == ["0.000", "0.889"]
    assert [t["cost (s)"] for t in trials] == ["6.7", "5.6"]


def test_costs_read_as_runs_list_costs_them(
    studied: tuple[Workspace, Registry], tmp_path: Path
) -> None:
    """The page printed each run's stored cost_s where `runs list` prints the one cost
    definition: an ok run recorded before train_s, of a Slurm job, costs its job's Start to
    End (here 27.5 s, not the training call's 6.7 s)."""
    from datetime import UTC, datetime, timedelta

    from pomlia_hpc.automl import records

    ws, reg = studied
    with reg.session() as s:
        job = s.get(Job, 1)
        assert job is not None
        t0 = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)
        job.backend, job.started_at, job.ended_at = "slurm", t0, t0 + timedelta(seconds=27.5)
    res = build_report(reg, ws, tmp_path / "r")
    rows = _rows((res.folder / "studies.html").read_text())
    head = next(r for r in rows if "failure cause" in r)
    trials = [dict(zip(head, r, strict=True)) for r in rows if len(r) == len(head) and r != head]
    listed = {r.id: r.cost_s for r in records.list_runs(reg)}
    assert [t["cost (s)"] for t in trials] == ["27.5", "5.6"]
    assert [f"{listed[int(t['run'])]:.1f}" for t in trials] == ["27.5", "5.6"]


def test_the_overview_counts_tasks_studies_and_recommendations(
    studied: tuple[Workspace, Registry], tmp_path: Path
) -> None:
    ws, reg = studied
    with reg.session() as s:
        s.add(Recommendation(task="pneu", output={"strategies": []}))
    res = build_report(reg, ws, tmp_path / "r")
    counts = {r[0]: r[1] for r in _rows((res.folder / "index.html").read_text()) if len(r) == 2}
    assert counts["tasks"] == "1" and counts["studies"] == "1"
    assert counts["recommendations"] == "1" and counts["training runs"] == "2"


def test_report_help_names_every_page(wide_console: None) -> None:
    """`report --help` did not list the Recommendations page."""
    res = CliRunner().invoke(app, ["report", "--help"])
    said = " ".join(res.output.split()).lower()
    for _file, title, _builder in PAGES:
        assert title.lower() in said, title


def _many_studies(reg: Registry, n: int, runs_each: int = 2) -> None:
    """``n`` studies on one task; study ``s{i}``'s runs come after ``s{i-1}``'s."""
    from sqlalchemy import insert

    task = row_task(reg)
    with reg.session() as s:
        rows = [
            {
                "task_id": task,
                "study": f"s{i}",
                "config": {"arch": "small_cnn"},
                "budget": 1.0,
                "status": "ok",
                "metrics": {"objective": 0.5 + j / 10, "epochs": 1},
            }
            for i in range(n)
            for j in range(runs_each)
        ]
        s.execute(insert(Run), rows)


def test_the_studies_page_shows_the_newest_studies_in_full(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """Every study had a figure and a trial table: 1,250 studies were a 37 MB page built in
    5 minutes (0.4 s of matplotlib each). The newest 20 now do, the rest one overview row."""
    from pomlia_hpc.report.pages_learn import MAX_STUDIES

    _many_studies(reg, MAX_STUDIES + 5)
    page = (build_report(reg, workspace, tmp_path / "r").folder / "studies.html").read_text()
    assert page.count("<img") == MAX_STUDIES
    sections = re.findall(r"<h2>Study (s\d+)</h2>", page)
    assert sections == [f"s{i}" for i in reversed(range(5, MAX_STUDIES + 5))]  # newest first
    overview = [r for r in _rows(page) if len(r) == 5 and r[0] != "study"]
    assert [r[0] for r in overview] == [f"s{i}" for i in reversed(range(MAX_STUDIES + 5))]
    assert overview[-1][2:] == ["2", "0", "acc 0.600"]  # older studies keep their row
    said = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    assert f"The newest {MAX_STUDIES} of {MAX_STUDIES + 5} studies" in said
    assert "pomlia runs list --study NAME" in said
    page = (
        build_report(reg, workspace, tmp_path / "r", max_studies=2).folder / "studies.html"
    ).read_text()
    assert re.findall(r"<h2>Study (s\d+)</h2>", page) == [
        f"s{MAX_STUDIES + 4}",
        f"s{MAX_STUDIES + 3}",
    ]


def test_the_studies_overview_lists_the_newest_studies(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """The overview table has a row for the newest MAX_STUDY_ROWS studies; the older ones are
    counted, not listed."""
    from pomlia_hpc.report.pages_learn import MAX_STUDY_ROWS

    _many_studies(reg, MAX_STUDY_ROWS + 2, runs_each=1)
    res = build_report(reg, workspace, tmp_path / "r", max_studies=0)
    page = (res.folder / "studies.html").read_text()
    assert "<img" not in page
    overview = [r[0] for r in _rows(page) if len(r) == 5 and r[0] != "study"]
    assert overview == [f"s{i}" for i in reversed(range(2, MAX_STUDY_ROWS + 2))]
    said = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    assert "2 older studies are not listed" in said


def test_more_studies_in_full_than_overview_rows_are_all_shown(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--studies 600` showed at most MAX_STUDY_ROWS (500) studies in full while the page said
    600; `--studies 0` said "The newest 0 of N studies are shown in full". The overview's
    cap is lowered to 3 here so that the test draws a handful of figures, not 500."""
    from pomlia_hpc.report import pages_learn

    monkeypatch.setattr(pages_learn, "MAX_STUDY_ROWS", 3)
    _many_studies(reg, 5, runs_each=1)
    page = (
        build_report(reg, workspace, tmp_path / "r", max_studies=4).folder / "studies.html"
    ).read_text()
    assert re.findall(r"<h2>Study (s\d+)</h2>", page) == ["s4", "s3", "s2", "s1"]
    overview = [r[0] for r in _rows(page) if len(r) == 5 and r[0] != "study"]
    assert overview == ["s4", "s3", "s2", "s1"]
    said = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    assert "The newest 4 of 5 studies" in said and "1 older study is not listed" in said
    page = (
        build_report(reg, workspace, tmp_path / "r0", max_studies=0).folder / "studies.html"
    ).read_text()
    said = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    assert "No study is shown in full ( pomlia report --studies N shows the newest N" in said
    assert "newest 0" not in said and "2 older studies are not listed" in said


def test_report_studies_option(workspace: Workspace, reg: Registry, wide_console: None) -> None:
    """`pomlia report --studies N` shows N studies in full; its default is the page's."""
    from pomlia_hpc.cli.report import MAX_STUDIES as CLI_DEFAULT
    from pomlia_hpc.report.pages_learn import MAX_STUDIES

    assert CLI_DEFAULT == MAX_STUDIES
    _many_studies(reg, 4)
    out = workspace.path("r")
    res = CliRunner().invoke(
        app, ["--home", str(workspace.home), "report", "--out", str(out), "--studies", "1"]
    )
    assert res.exit_code == 0, res.output
    assert (out / "studies.html").read_text().count("<img") == 1
    said = " ".join(CliRunner().invoke(app, ["report", "--help"]).output.split())
    assert "--studies" in said


def test_the_best_validation_metric_names_its_image_count(
    studied: tuple[Workspace, Registry], tmp_path: Path
) -> None:
    """Each trial's cell said `1.000 (n=8)` but the overview's best said `auc 1.000`: the
    best of a study now carries the validation images it was computed on, as elsewhere."""
    ws, reg = studied
    with reg.session() as s:
        best = s.get(Run, 2)
        assert best is not None
        best.metrics = {**best.metrics, "val": {"auc": 1.0, "n": 8}}
    res = build_report(reg, ws, tmp_path / "r")
    rows = _rows((res.folder / "studies.html").read_text())
    assert dict(zip(rows[0], rows[1], strict=True))["best validation metric"] == "auc 1.000 (n=8)"
