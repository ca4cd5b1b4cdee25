"""``pomlia report``: a static HTML report of a workspace, checked as files and in a real
headless Chromium (every page loads without console errors, every image decodes)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import (
    Dataset,
    DatasetVersion,
    Deployment,
    Model,
    MonitorReport,
    Registry,
    Run,
    Task,
)
from pomlia_hpc.report import build_report
from pomlia_hpc.report.build import PAGES
from pomlia_hpc.report.html import relative_href
from pomlia_hpc.report.pages_strategy import recommendations_page
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder

EVIL = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Registry, list[str]]:
    """A workspace with three datasets (their refs returned), an encoder with their
    embeddings, a study with ok and crashed trials, its model and a deployment of it."""
    from pomlia_hpc.cluster import Executor
    from pomlia_hpc.fingerprint.extract import extract

    home = tmp_path_factory.mktemp("report") / "home"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="debug")
    ws.create()
    reg = Registry.open(ws.db_url)
    refs = [
        make_dataset(ws, reg, name, flag, sizes=(24, 8, 16))
        for name, flag in (
            ("blood", "bloodmnist"),
            ("derma", "dermamnist"),
            ("pneu", "pneumoniamnist"),
        )
    ]
    make_encoder(ws, reg, "enc", latent_dim=2)
    extract(reg, ws, "enc", refs, executor=Executor.from_profile("debug", ws.jobs, reg))
    with reg.session() as s:
        pneu = s.scalar(select(DatasetVersion.id).order_by(DatasetVersion.id.desc()))
        task = Task(name="pneu-task", dataset_version_id=pneu, metric="auc", task_type="binary")
        s.add(task)
        s.flush()
        runs = [
            Run(
                task_id=task.id,
                study="st",
                config={"arch": "small_cnn", "lr": 0.01},
                budget=1,
                status="ok",
                metrics={
                    "objective": 0.71,
                    "val": {"auc": 0.71, "n": 40},
                    "test": {"auc": 0.7, "n": 50},
                    "epochs": 1,
                },
                cost_s=3.0,
            ),
            Run(
                task_id=task.id,
                study="st",
                config={"arch": "resnet18"},
                budget=1,
                status="crashed",
                error=f"Traceback ...\nRuntimeError: {EVIL}",
                metrics={"cause": f"out of memory {EVIL}"},
                cost_s=1.0,
            ),
            Run(
                task_id=task.id,
                study="st",
                config={"arch": "small_cnn", "lr": 0.1},
                budget=3,
                status="ok",
                metrics={"objective": 0.83, "epochs": 3},
                cost_s=5.0,
            ),
        ]
        s.add_all(runs)
        s.flush()
        model = Model(
            name="st-best",
            task_id=task.id,
            run_id=runs[2].id,
            path="/nowhere.pt",
            lineage={
                "study": "st",
                "run_id": runs[2].id,
                "dataset": refs[2],
                "champion": "old-champ",
                "code_version": {"version": "0.1.0", "commit": "abcdef123456"},
                "config": {"arch": "small_cnn", "lr": 0.1},
            },
        )
        s.add(model)
        s.flush()
        s.add(Deployment(model_id=model.id, bundle_path="/b", status="created"))
    return ws, reg, refs


@pytest.fixture(scope="module")
def monitor_reports(learned: tuple[Workspace, Registry, list[str]]) -> None:
    """The model's monitor history: three old-style reports, then one as `monitor run`
    records it, with its page on disk."""
    ws, reg, _ = learned
    now = datetime.now(UTC)
    with reg.session() as s:
        model = s.scalars(select(Model).where(Model.name == "st-best")).one()
        for i, (drift, flag) in enumerate(((0.01, False), (0.2, False), (0.6, True))):
            s.add(
                MonitorReport(
                    model_id=model.id,
                    drift={"mmd_p": drift},
                    metrics={"accuracy": 0.8 - drift / 2, "n": 100 + i},
                    triggered=flag,
                    created_at=now + timedelta(days=i),
                )
            )
        # A report as `monitor run` records it, with its page on disk.
        page = ws.path("reports", "st-best", "r4", "report.html")
        page.parent.mkdir(parents=True)
        page.write_text("<!DOCTYPE html><html><head><title>monitor report</title></head></html>")
        s.add(
            MonitorReport(
                model_id=model.id,
                drift={
                    "mmd": {"name": "mmd", "p_value": 0.0004, "rejected": True},
                    "ks": {"name": "ks", "p_value": 0.31, "rejected": False},
                },
                metrics={
                    "status": "alarm",
                    "window": {"since": "2026-12-01T02:00:00+00:00", "until": "2026-12-02T02:00"},
                    "predictions": 412,
                    "performance": {"labels": 40, "accuracy": 0.625},
                    "model_version": "abc",
                },
                triggered=True,
                report_path=str(page.with_name("report.json")),
                created_at=now + timedelta(days=4),
            )
        )


@pytest.fixture(scope="module")
def recommendation(learned: tuple[Workspace, Registry, list[str]]) -> None:
    """A recommendation for the study's task, newer than its runs (the page says no run
    came after it)."""
    from pomlia_hpc.pipeline.spec import parse_pipeline
    from pomlia_hpc.pipeline.stage import StageContext
    from pomlia_hpc.pipeline.stages_strategy import import_shipped
    from pomlia_hpc.strategy.recommend import recommend

    ws, reg, _ = learned
    # A real answer of the recommender, from the published tables shipped with pomlia.
    spec = parse_pipeline(
        {"name": "x", "datasets": [{"name": "a", "medmnist": "bloodmnist"}]}, "x", ws.home
    )
    import_shipped(StageContext(spec, ws, reg))
    recommend(reg, "pneu-task", k=3)


@pytest.fixture(scope="module")
def pipeline_records(learned: tuple[Workspace, Registry, list[str]]) -> None:
    """Two pipelines' stage records: one done data stage, and a pipeline whose run order
    differs from the names' order."""
    ws, _, refs = learned
    rec = ws.path("pipelines", "demo", "stages", "data.json")
    rec.parent.mkdir(parents=True)
    rec.write_text(
        json.dumps(
            {
                "stage": "data",
                "status": "done",
                "key": "ab" * 32,
                "outputs": {"versions": {"blood": refs[0]}},
            }
        )
    )
    # A pipeline whose stages sort otherwise by name, whose error is cut near a quote.
    demo = ws.path("pipelines", "ordered")
    (demo / "stages").mkdir(parents=True)
    order = ["lookalikes", "data", "encoder", "automl"]
    (demo / "run.json").write_text(json.dumps({"order": order, "stages": {}}))
    for name in order:
        error = ("x" * 296 + '"quoted"') if name == "automl" else None
        record = {"stage": name, "status": "failed" if error else "done", "error": error}
        (demo / "stages" / f"{name}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def filled(
    learned: tuple[Workspace, Registry, list[str]],
    monitor_reports: None,
    recommendation: None,
    pipeline_records: None,
) -> tuple[Workspace, Registry]:
    """A workspace with something in every section: the fixtures above, in this order."""
    ws, reg, _ = learned
    return ws, reg


def test_every_section_is_written_and_escaped(
    filled: tuple[Workspace, Registry], tmp_path: Path
) -> None:
    ws, reg = filled
    res = build_report(reg, ws, tmp_path / "r")
    names = sorted(p.name for p in res.pages)
    assert names == sorted(
        [
            "index.html",
            "datasets.html",
            "fingerprints.html",
            "recommendations.html",
            "studies.html",
            "models.html",
            "monitor.html",
            "pipelines.html",
        ]
    )
    studies = (res.folder / "studies.html").read_text()
    assert EVIL not in studies and "&lt;script&gt;" in studies  # causes shown, never executed
    assert "out of memory" in studies and "crashed" in studies
    # The crashed run's epochs (its budget, a float) read 1.0 beside the others' 1: its row's
    # epochs cell (the third), not any ">1<" (a run id of 1 would match that).
    crashed_row = next(r for r in re.findall(r"<tr>(.*?)</tr>", studies) if "resnet18" in r)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", crashed_row)
    assert cells[2] == "1", crashed_row
    assert cells[6] == "1.0", crashed_row  # its cost: seconds to 1 decimal, as `runs list`
    recs = (res.folder / "recommendations.html").read_text()
    assert "Recommendation 1 for task pneu-task" in recs and "expected" in recs
    assert "No run on the task since." in recs  # the runs above are older than the answer
    models = (res.folder / "models.html").read_text()
    assert "st-best" in models and "study:</span> st, best run" in models
    for page in res.pages:
        text = page.read_text()
        # Self-contained: no external resources, no scripts.
        assert "http://" not in text and "https://" not in text and "<script" not in text
        assert "src='data:image/png;base64," in text or page.name in (
            "index.html",
            "pipelines.html",
            "models.html",
            "recommendations.html",
        )


def test_empty_workspace_has_only_the_overview(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    res = build_report(reg, workspace, tmp_path / "r")
    assert [p.name for p in res.pages] == ["index.html"]
    assert "Nothing recorded yet" in (res.folder / "index.html").read_text()


def test_pages_are_utf8_whatever_the_locale(workspace: Workspace, tmp_path: Path) -> None:
    """The pages declare UTF-8 but were written in the locale's encoding: in an ASCII locale
    (no UTF-8 mode, no locale coercion: a cluster's batch environment) the title's "·" failed
    the report with a UnicodeEncodeError (exit 70); a Latin-1 locale garbled it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "pomlia_hpc", "--home", str(workspace.home), "report"]
    done = subprocess.run(
        [*cmd, "--out", str(out)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "<title>Workspace report \u00b7 pomlia report</title>" in (
        (out / "index.html").read_bytes().decode("utf-8")
    )


def test_an_unreadable_clustering_file_is_said_on_its_page(
    workspace: Workspace, reg: Registry, tmp_path: Path, browser: object
) -> None:
    """One pipeline's clustering.json cut short (or of another format) ended the whole report
    in a traceback (exit 70); the others' results and every other page were lost with it."""
    make_encoder(workspace, reg, "enc", latent_dim=2)
    cut = workspace.path("reports", "pipelines", "cut", "clustering.json")
    cut.parent.mkdir(parents=True)
    cut.write_text('{"encoder": "enc", "linkage": "ward", "gro')
    other = workspace.path("reports", "pipelines", "other", "clustering.json")
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps({"encoder": "enc", "linkage": "ward"}))  # keys missing
    res = build_report(reg, workspace, tmp_path / "r")
    seen = browser.check(res.folder / "fingerprints.html")  # type: ignore[attr-defined]
    assert not seen.console_errors  # type: ignore[attr-defined]
    text = seen.text  # type: ignore[attr-defined]
    assert f"{cut} cannot be read (JSONDecodeError: Unterminated string" in text
    assert f"{other} cannot be read (KeyError: 'latent_dim')" in text


def test_every_time_shown_is_utc_and_said_to_be(
    workspace: Workspace, reg: Registry, tmp_path: Path, browser: object
) -> None:
    """The pages showed times without a zone ("created 2026-12-01 02:00") beside a footer in
    UTC, and a pipeline stage's times as recorded, in whatever zone their text carried."""
    with reg.session() as s:
        s.add(Model(name="m", path="/m.pt", lineage={}, created_at=datetime(2026, 12, 1, 2)))
    stages = workspace.path("pipelines", "p", "stages")
    stages.mkdir(parents=True)
    (stages / "data.json").write_text(
        json.dumps(
            {
                "stage": "data",
                "status": "done",
                "started_at": "2026-12-01T03:00:00+01:00",  # 02:00 UTC
                "ended_at": "2026-12-01T02:00:05",  # no zone: UTC, as pomlia records
            }
        )
    )
    res = build_report(reg, workspace, tmp_path / "r")
    driver = browser.driver  # type: ignore[attr-defined]
    rows = {}
    for page in ("models.html", "pipelines.html"):
        assert not browser.check(res.folder / page).console_errors  # type: ignore[attr-defined]
        rows[page] = driver.execute_script(
            "return Array.from(document.querySelectorAll('tr'))"
            ".map(r => Array.from(r.cells).map(c => c.innerText))"
        )
    models, stages_seen = rows["models.html"], rows["pipelines.html"]
    assert models[0][-1] == "created (UTC)" and models[1][-1] == "2026-12-01 02:00"
    assert stages_seen[0][2:4] == ["started (UTC)", "ended (UTC)"]
    assert stages_seen[1][2:4] == ["2026-12-01 02:00:00", "2026-12-01 02:00:05"]


def test_report_lists_only_the_pages_it_writes(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`pomlia report` printed every page title ("Pipelines", "Monitor history", ...) and
    counted index.html among "(7 pages)" while it wrote only the pages with data."""
    from typer.testing import CliRunner

    from pomlia_hpc.cli import app

    listed: list[str] = []
    res = build_report(reg, workspace, tmp_path / "r", progress=listed.append)
    assert listed == [] and [p.name for p in res.pages] == ["index.html"]
    make_dataset(workspace, reg, "pneu")
    res = build_report(reg, workspace, tmp_path / "r", progress=listed.append)
    titles = {file: title for file, title, _b in PAGES}
    assert listed == [titles[p.name] for p in res.pages[1:]] == ["Datasets"]
    out = " ".join(CliRunner().invoke(app, ["report", "--out", str(tmp_path / "c")]).output.split())
    assert out.startswith("Datasets report: ") and "(the overview and the 1 page(s) above)" in out


def test_report_replaces_a_report_but_not_other_folders(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    out = tmp_path / "r"
    build_report(reg, workspace, out)
    (out / "stale.html").write_text("old")
    build_report(reg, workspace, out)
    assert not (out / "stale.html").exists()  # replaced as a whole
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a pomlia report"):
        build_report(reg, workspace, other)
    assert (other / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_report(reg, workspace, empty).folder == empty


def test_a_folder_with_an_index_but_no_marker_is_not_replaced(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`pomlia report --out mysite` replaced any folder holding an index.html (a web site, a
    thesis folder): its other files were lost. Only a folder carrying the report's marker
    (one a report wrote) is replaced now."""
    site = tmp_path / "mysite"
    site.mkdir()
    (site / "index.html").write_text("<html/>")
    (site / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match=r"holds an index\.html and files a report does not"):
        build_report(reg, workspace, site)
    assert sorted(p.name for p in site.iterdir()) == ["index.html", "thesis.tex"]
    assert (site / "index.html").read_text() == "<html/>"
    # Nothing but files of the report's page names, but a page of someone's own: kept (a
    # site's own index.html was replaced by the report's overview).
    (site / "thesis.tex").unlink()
    with pytest.raises(InputError, match=r"holds an index\.html and pages a report did not"):
        build_report(reg, workspace, site)
    assert (site / "index.html").read_text() == "<html/>"
    # a report of a pomlia before the marker (nothing but its pages) is still replaced
    old = "<!DOCTYPE html><html><head><title>Models · pomlia report</title></head></html>"
    (site / "index.html").write_text(old.replace("Models", "Overview"))
    (site / "models.html").write_text(old)
    assert (build_report(reg, workspace, site).folder / ".pomlia-report").is_file()
    # A report folder carries the marker, so the next report replaces it.
    report = build_report(reg, workspace, tmp_path / "r").folder
    assert (report / ".pomlia-report").is_file()
    (report / "notes.txt").write_text("left in a report folder")
    build_report(reg, workspace, report)
    assert not (report / "notes.txt").exists() and (report / ".pomlia-report").is_file()


def test_an_out_that_is_a_file_or_unwritable_is_one_error(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`pomlia report --out FILE` listed FILE as a folder and a folder that cannot be written
    failed in mkdir: both were tracebacks."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(InputError, match=r"notes\.txt is a file: expected a folder"):
        build_report(reg, workspace, afile)
    assert afile.read_text() == "mine"
    if Path("/proc/self").is_dir():  # a folder no one can create anything in (Linux)
        with pytest.raises(InputError, match="/proc/pomlia-report cannot be written"):
            build_report(reg, workspace, Path("/proc/pomlia-report"))


def test_a_refused_report_leaves_no_folder_it_made(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused `pomlia report --out NEW/.../REPORT` left the missing parents it had made
    (empty folders) behind: when a deeper name could not be made, and when the report was
    refused after its parents were made."""
    room = tmp_path / "room"
    room.mkdir()
    too_long = room / "new1" / "new2" / ("x" * 300) / "r"
    with pytest.raises(InputError, match="cannot be created: File name too long"):
        build_report(reg, workspace, too_long)
    assert sorted(p.name for p in room.iterdir()) == []

    def refuses(_reg: Registry, _ws: Workspace, _folder: Path) -> str:
        raise InputError("refused while the pages were built")

    monkeypatch.setattr("pomlia_hpc.report.build.PAGES", [("x.html", "X", refuses)])
    (room / "kept").mkdir()
    with pytest.raises(InputError, match="refused while the pages were built"):
        build_report(reg, workspace, room / "kept" / "new" / "r")
    assert sorted(p.name for p in room.iterdir()) == ["kept"]
    assert list((room / "kept").iterdir()) == []
    afile = room / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(InputError, match=r"notes\.txt is a file, expected a folder"):
        build_report(reg, workspace, afile / "new" / "r")
    assert sorted(p.name for p in room.iterdir()) == ["kept", "notes.txt"]


def test_pages_load_in_chromium_without_errors(
    filled: tuple[Workspace, Registry], tmp_path: Path, browser: object
) -> None:
    ws, reg = filled
    res = build_report(reg, ws, tmp_path / "r")
    for page in res.pages:
        seen = browser.check(page)  # type: ignore[attr-defined]
        assert seen.title.endswith("pomlia report"), page
        assert seen.console_errors == [], (page.name, seen.console_errors)
        assert seen.broken_images == [], (page.name, seen.broken_images)
        # the page's own heading is rendered, and the navigation to every other page
        title = next((t for f, t, _b in PAGES if f == page.name), "Workspace report")
        assert seen.title == f"{title} · pomlia report", (page.name, seen.title)
        assert title in seen.text and all(t in seen.text for _f, t, _b in PAGES), page.name
    seen = browser.check(res.folder / "fingerprints.html")  # type: ignore[attr-defined]
    assert len(seen.images) >= 3  # latent scatter, means, similarity heatmap
    # a run's metrics with the images they were computed on, as `runs list` shows them
    seen = browser.check(res.folder / "studies.html")  # type: ignore[attr-defined]
    assert "0.710 (n=40)" in seen.text and "0.700 (n=50)" in seen.text, seen.text


def test_recommendations_page_reads_the_answers_once(filled: tuple[Workspace, Registry]) -> None:
    ws, reg = filled
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(reg.engine, "before_cursor_execute", seen)
    try:
        page = recommendations_page(reg, ws, ws.path("reports", "html"))
    finally:
        event.remove(reg.engine, "before_cursor_execute", seen)
    assert page is not None and "Recommendation 1 for task pneu-task" in page
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    reads = [s for s in selects if "FROM recommendations" in s]
    assert len(reads) == 1, selects  # the answers once; their runs in one more query, and
    # their tasks' data set sizes (the knowledge base's min-epochs rule) in one more
    assert len(selects) == 3, selects


def _page(res: Any, name: str) -> str:
    """The page's visible text with tags dropped and entities decoded, spaces folded."""
    import html
    import re

    text = (res.folder / name).read_text()
    text = text[text.index("<main>") :]  # the page's body, not its CSS
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def test_monitor_models_and_pipelines_pages_read_well(
    filled: tuple[Workspace, Registry], tmp_path: Path
) -> None:
    """monitor.html showed raw, cut JSON; pipelines.html listed stages by name and cut escaped
    text inside an entity ("&quo"); models.html showed the lineage as a Python dict."""
    import re

    ws, reg = filled
    res = build_report(reg, ws, tmp_path / "r")
    monitor = _page(res, "monitor.html")
    assert "2026-12-01 02:00 → 2026-12-02 02:00" in monitor and " 412 " in monitor
    assert "40, accuracy 0.625" in monitor and "mmd p=0.0004 rejected" in monitor
    assert "ks p=0.31" in monitor and '{"' not in monitor
    for page in res.pages:  # no entity cut in half anywhere
        bad = re.findall(r"&(?!(?:amp|lt|gt|quot|#x27|#39|nbsp);)[^\s<]{0,8}", page.read_text())
        assert bad == [], (page.name, bad)
    pipelines = _page(res, "pipelines.html")
    section = pipelines[pipelines.index("Pipeline ordered") :]
    places = [section.index(f" {n} ") for n in ("lookalikes", "data", "encoder", "automl")]
    assert places == sorted(places), section
    assert 'xx"qu…' in section  # the text is cut, then escaped: the quote stays whole
    models = _page(res, "models.html")
    assert "parent model: old-champ" in models and "data: pneu@" in models
    assert "code: 0.1.0 (abcdef12)" in models and "config: small_cnn" in models
    assert "{" not in models


def test_monitor_page_links_each_report_page(
    filled: tuple[Workspace, Registry], tmp_path: Path, browser: object
) -> None:
    """monitor.html named a report's JSON file as text; it links its report.html now, and
    the link opens in a browser. The link was an absolute file:// one, which broke once the
    folders were copied or served over HTTP; it is relative to the report folder now."""
    import functools
    import shutil
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    ws, reg = filled
    res = build_report(reg, ws)  # the default folder, <home>/reports/html
    try:
        copy = tmp_path / "elsewhere" / "reports"
        shutil.copytree(ws.path("reports"), copy)
    finally:
        shutil.rmtree(res.folder)
    driver = browser.driver  # type: ignore[attr-defined]

    def follow(url: str) -> str:
        """Open monitor.html at ``url``, follow its one report link; the page reached."""
        driver.get(url)
        links = driver.find_elements("tag name", "a")
        pages = [a.get_attribute("href") for a in links if a.text == "report.html"]
        assert len(pages) == 1, pages
        driver.get(pages[0])
        assert driver.title == "monitor report", (pages[0], driver.title)
        return str(pages[0])

    html = (copy / "html" / "monitor.html").read_text()
    assert "href='../st-best/r4/report.html'" in html and "file:" not in html
    reached = follow((copy / "html" / "monitor.html").as_uri())
    assert reached == (copy / "st-best" / "r4" / "report.html").as_uri()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(copy))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            root = f"http://127.0.0.1:{server.server_address[1]}"
            assert follow(f"{root}/html/monitor.html") == f"{root}/st-best/r4/report.html"
        finally:
            server.shutdown()


def test_a_relative_link_is_quoted_part_by_part() -> None:
    """A ``#`` or ``?`` in a folder name would end a link's path; ``/`` separates its parts."""
    target = Path("/ws/reports/st #1?/r 4/report.html")
    assert relative_href(target, Path("/ws/reports/html")) == "../st%20%231%3F/r%204/report.html"
    assert relative_href(target, Path("/ws/reports/st #1?")) == "r%204/report.html"


def test_lineage_shows_every_recorded_key() -> None:
    """The models page never showed a run_id without a study, the config key, the task, its id
    and metric, a dataset_version beside the dataset, or an unknown non-scalar value."""
    import html
    import re

    from pomlia_hpc.report.pages_learn import lineage_html

    def text(lin: dict[str, Any]) -> str:
        return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", lineage_html(lin))).split())

    shown = text(
        {
            "run_id": 7,
            "epochs": 3,
            "config_key": "c0ffee",
            "task": "pneu-task",
            "task_id": 2,
            "metric": "auc",
            "dataset": "pneu",
            "dataset_version": "54d67f8f",
            "dataset_version_id": 4,
            "extra": {"b": [1, 2], "a": None},
            "note": EVIL,
        }
    )
    assert "run: 7, 3 epochs" in shown
    assert "config key: c0ffee" in shown
    assert "task: pneu-task, id 2, metric auc" in shown
    assert "data: pneu, version 54d67f8f, version id 4" in shown
    assert 'extra: {"a": null, "b": [1, 2]}' in shown
    assert f"note: {EVIL}" in shown and EVIL not in lineage_html({"note": EVIL})  # escaped
    # A ref that already names its version says it once; a long value is cut.
    assert text({"dataset": "pneu@54d6", "dataset_version": "54d6"}) == "data: pneu@54d6"
    assert text({"study": "st", "run_id": 7}) == "study: st, best run 7"
    long = text({"notes": ["x" * 300]})
    assert long.endswith("…") and len(long) < 180
    assert text({}) == "none recorded"


def test_an_unwritable_out_is_refused_before_any_page_is_built(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pomlia report --out /proc/rep` built every page (seconds, each listed) before the
    folder was refused; now no page is built, and no parent folder it made is left."""
    built: list[str] = []
    if Path("/proc/self").is_dir():  # a folder no one can create anything in (Linux)
        with pytest.raises(InputError, match="/proc/rep cannot be written"):
            build_report(reg, workspace, Path("/proc/rep"), progress=built.append)
        assert built == []

    def read_only(folder: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("pomlia_hpc.report.build.probe_writable", read_only)
    with pytest.raises(InputError, match=r"cannot be written \(Read-only file system in "):
        build_report(reg, workspace, tmp_path / "new" / "r", progress=built.append)
    assert built == [] and not (tmp_path / "new").exists()


def test_the_sample_grid_is_of_the_version_the_name_means(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """The datasets page draws the grid of the current version (an older one re-added is
    current again), not of the highest id."""
    from pomlia_hpc.report.pages_data import datasets_page

    old = make_dataset(workspace, reg, "blood", seed=0)
    new = make_dataset(workspace, reg, "blood", seed=3)
    assert new != old
    with reg.session() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == "blood"))
        assert ds is not None
        ds.current_version_id = s.scalar(
            select(DatasetVersion.id).where(DatasetVersion.version == old.split("@")[1])
        )
    body = datasets_page(reg, workspace, tmp_path) or ""
    grids = body.split("Sample grids")[1]
    assert f"@{old.split('@')[1]}<br>" in grids and f"@{new.split('@')[1]}<br>" not in grids
