"""``pomlia monitor run/show/history/reference`` end to end on a real exported model whose
prediction log is written by the server's own predictor; bad input gives one clear message."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.errors import BUSY_EXIT, PomliaError
from pomlia_hpc.registry import MonitorReport, Registry, RetrainRequest
from pomlia_hpc.serve.predlog import log_dir, prune_log
from pomlia_hpc.serve.reference import REFERENCE_FILE, read_reference, write_reference
from pomlia_hpc.workspace import Workspace
from tests.fixtures.browser import Browser
from tests.fixtures.factories import log_line
from tests.monitor_support import (
    MonitorEnv,
    append_lines,
    demo_workspace,
    images,
    log_predictions,
    with_empty_log,
)

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitorEnv]:
    """One workspace with an exported demo model 'blood' and its reference (export is slow)."""
    yield from demo_workspace(tmp_path_factory, "monitor")


@pytest.fixture
def fresh(env: MonitorEnv, monkeypatch: pytest.MonkeyPatch) -> MonitorEnv:
    """``env`` with an empty prediction log, selected for the CLI."""
    return with_empty_log(env, monkeypatch)


def monitor(*args: str) -> tuple[int, str]:
    """(exit status, output) of ``pomlia monitor ARGS`` in-process; a PomliaError is what the
    console script prints as one line with its exit status (2; 4 for a thing not found;
    checked by a subprocess test)."""
    res = runner.invoke(app, ["monitor", *args])
    if isinstance(res.exception, PomliaError):
        return res.exception.exit_code, res.output + str(res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def n_rows(reg: Registry, table: type) -> int:
    with reg.session() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_no_drift_window_is_ok_and_recorded(fresh: tuple[Workspace, Registry, Path]) -> None:
    ws, reg, bundle = fresh
    x, _ = images(200)
    log_predictions(ws, bundle, x)
    before, requests = n_rows(reg, MonitorReport), n_rows(reg, RetrainRequest)
    code, out = monitor("run", "blood", "--json")
    assert code == 0, out
    report = json.loads(out[out.index("{") :])
    assert report["status"] == "ok" and not report["alarm"]
    assert report["volume"]["predictions"] == 200
    assert {t["name"] for t in report["tests"]} == {
        "mmd",
        "ks",
        "classifier",
        "labels",
        "confidence",
    }
    assert all(t["p_value"] > 0.01 for t in report["tests"])
    mmd = next(t for t in report["tests"] if t["name"] == "mmd")
    assert mmd["detail"]["window_resamples"] == 1000
    assert n_rows(reg, MonitorReport) == before + 1
    assert n_rows(reg, RetrainRequest) == requests
    code, out = monitor("history", "blood")
    assert code == 0 and "ok" in out
    # "report N" was printed twice (a progress line and the result); once now, with its page.
    code, out = monitor("run", "blood")
    said = " ".join(out.split())
    assert code == 0 and len(re.findall(r"\breport \d+", said)) == 1, said
    assert re.search(r"report\d+:\S+report\.html", "".join(out.split())), said


def test_foreign_data_alarms_with_a_retrain_request_and_the_hook(
    fresh: tuple[Workspace, Registry, Path], tmp_path: Path
) -> None:
    ws, reg, bundle = fresh
    x, _ = images(100)
    log_predictions(ws, bundle, x)
    foreign, _ = make_split("pathmnist", 100, size=28)
    log_predictions(ws, bundle, foreign)  # a second server process: a second file
    marker = tmp_path / "hook.txt"
    hook = f'echo "$POMLIA_MODEL $POMLIA_REPORT_JSON" > {marker}'
    code, out = monitor("run", "blood", "--on-alarm", hook)
    assert code == 1, out
    assert "ALARM" in out and "mmd" in out
    model, report_path = marker.read_text().split()
    assert model == "blood" and Path(report_path).is_file()
    report = json.loads(Path(report_path).read_text())
    assert report["alarm"] and report["log"]["files_read"] == 2
    with reg.session() as s:
        req = s.scalars(select(RetrainRequest).order_by(RetrainRequest.id.desc())).first()
        assert req is not None and req.status == "open" and "mmd" in req.reason
        row = s.get(MonitorReport, req.monitor_report_id)
        assert row is not None and row.triggered and row.report_path == report_path
    html = Path(report_path).with_name("report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "ALARM" in html
    code, out = monitor("show", str(req.monitor_report_id))
    assert code == 0 and "mmd" in out and "report.html" in out


def test_the_alarm_hook_leaves_json_output_valid(fresh: tuple[Workspace, Registry, Path]) -> None:
    """The `--on-alarm` hook inherited stdout: its output landed before `monitor run --json`'s
    report, so a cron job's stdout was no JSON exactly when there was an alarm. The hook's
    output goes to stderr now."""
    ws, _, bundle = fresh
    log_predictions(ws, bundle, images(100)[0])
    log_predictions(ws, bundle, make_split("pathmnist", 100, size=28)[0])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    hook = ["--on-alarm", "echo HOOK-SAID-HI"]
    res = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "monitor", "run", "blood", "--json", *hook],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)["alarm"], res.stdout
    assert "HOOK-SAID-HI" in res.stderr and "HOOK-SAID-HI" not in res.stdout


def test_accuracy_drop_on_feedback_is_detected(
    fresh: tuple[Workspace, Registry, Path], tmp_path: Path
) -> None:
    """With a reference whose labels are the model's own predictions (accuracy 1), feedback
    that disagrees on 30% of 100 images is a significant drop."""
    ws, _reg, bundle = fresh
    ref_path = bundle / REFERENCE_FILE
    original = ref_path.read_bytes()
    ref = read_reference(ref_path)
    try:
        from dataclasses import replace

        from pomlia_hpc.serve.exported import ExportedBundle

        write_reference(ExportedBundle.open(bundle), replace(ref, labels=ref.pred_index.copy()))
        x, _ = images(100)
        records = log_predictions(ws, bundle, x)
        shutil.rmtree(log_dir(ws.path("logs"), "blood"))
        pred = np.array([r["output"]["label_index"] for r in records])
        wrong = pred.copy()
        wrong[:30] = (wrong[:30] + 1) % 8
        log_predictions(ws, bundle, x, labels=wrong)
        code, out = monitor("run", "blood", "--json")
        report = json.loads(out[out.index("{") :])
        perf = report["performance"]
        assert perf["labels"] == 100 and perf["coverage"] == 1.0
        assert abs(perf["accuracy"] - 0.70) < 1e-9
        assert perf["interval_95"][0] < 0.70 < perf["interval_95"][1]
        assert code == 1 and any(r.startswith("accuracy") for r in report["reasons"])
    finally:
        ref_path.write_bytes(original)


def test_empty_window_reports_so_without_alarm(fresh: tuple[Workspace, Registry, Path]) -> None:
    ws, _reg, bundle = fresh
    x, _ = images(20)
    log_predictions(ws, bundle, x, when=datetime.now(UTC) - timedelta(days=3))
    code, out = monitor("run", "blood", "--window", "24h", "--json")
    assert code == 0, out
    report = json.loads(out[out.index("{") :])
    assert report["status"] == "empty" and report["tests"] == []
    assert any("nothing to test" in n for n in report["notes"])
    # An explicit window around the old records finds them.
    since = (datetime.now(UTC) - timedelta(days=4)).isoformat()
    code, out = monitor("run", "blood", "--since", since, "--json")
    report = json.loads(out[out.index("{") :])
    assert report["volume"]["predictions"] == 20


def test_a_window_whose_files_retention_deleted_says_so(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    """A server's log retention deleted the files of a window, and the run reported an empty
    window as if nothing had been served: it now names the deletion (report, notes, stderr)."""
    ws, _reg, bundle = fresh
    x, _ = images(20)
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    log_predictions(ws, bundle, x, when=three_days_ago)
    folder = log_dir(ws.path("logs"), "blood")
    for path in folder.glob("*.jsonl"):
        os.utime(path, (three_days_ago.timestamp(), three_days_ago.timestamp()))
    cutoff = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    assert len(prune_log(folder, older_than=cutoff)) == 1  # as a server's retention does
    since = (datetime.now(UTC) - timedelta(days=4)).isoformat()
    code, out = monitor("run", "blood", "--since", since, "--json")
    assert code == 0, out
    report = json.loads(out[out.index("{") :])
    assert report["status"] == "empty"
    deleted = report["log"]["retention_deleted_through"]
    assert datetime.fromisoformat(deleted) >= three_days_ago
    (note,) = [n for n in report["notes"] if "log retention" in n]
    assert "may be missing" in note
    # A window after the deleted files lost nothing: no note.
    code, out = monitor("run", "blood", "--window", "24h", "--json")
    report = json.loads(out[out.index("{") :])
    assert report["log"]["retention_deleted_through"] is None
    assert not [n for n in report["notes"] if "log retention" in n]


def test_torn_corrupt_and_foreign_lines_are_skipped_and_counted(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    ws, _reg, bundle = fresh
    x, _ = images(60)
    records = log_predictions(ws, bundle, x)
    folder = log_dir(ws.path("logs"), "blood")
    (first,) = folder.glob("*.jsonl")
    # A newer server's record: keys this version does not know are ignored, not corruption.
    newer = {"colour": "red", "output": {**records[0]["output"], "p": 1}}
    other_version = dict(records[0], id="f" * 32, model_version="0123456789ab", **newer)
    rejection = log_line("rejection", time=records[0]["time"], model="blood")
    append_lines(first, rejection, rejection)
    foreign = dict(records[3], id="e" * 32, colour="red", deployment="3")  # mistyped
    append_lines(first, b"{not json\n", other_version, foreign)
    append_lines(first, b'{"type": "prediction", "id": "torn')  # a crash mid-line
    stray = folder / "20200101T000000-otherhost-1-0000.jsonl"  # a copied file of another model
    append_lines(stray, dict(records[1], model="pathology"), dict(records[2], model="pathology"))
    (folder / "notes.txt").write_text("not a log file")
    code, out = monitor("run", "blood", "--json")
    assert code == 0, out
    report = json.loads(out[out.index("{") :])
    log = report["log"]
    assert report["volume"]["predictions"] == 60
    assert log["torn_lines"] == 1 and log["corrupt_lines"] == 2
    bad_json, mistyped = log["corrupt_examples"]
    assert bad_json.startswith(f"{first.name}:{len(records) + 3}: not valid JSON")
    # The key that makes it corrupt is named, not the unknown one beside it.
    assert mistyped.startswith(f"{first.name}:{len(records) + 5}: bad value for 'deployment'")
    assert log["unknown_key_lines"] == 1 and log["unknown_keys"] == {"colour": 1, "output.p": 1}
    quality = report["quality"]
    assert quality["rejections_by_reason"] == {"wrong-size": 2}
    # The 60 predictions were one request (a batch): 2 refused of 3 requests.
    assert quality["rejected_share"] == pytest.approx(2 / 3)
    assert log["other_models"] == {"pathology": 2}
    assert log["other_versions"] == {"0123456789ab": 1}
    notes = " ".join(report["notes"])
    assert "torn" in notes and "corrupt" in notes and "pathology" in notes
    assert "0123456789ab" in notes
    assert "1 record(s) carry fields this version does not know: colour, output.p; ignored" in notes


def test_deployment_filter(fresh: tuple[Workspace, Registry, Path]) -> None:
    ws, reg, bundle = fresh
    from pomlia_hpc.registry import Deployment, Model

    with reg.session() as s:
        model_id = s.scalar(select(Model.id).where(Model.name == "blood"))
        assert model_id is not None
        dep = Deployment(model_id=model_id, bundle_path=str(bundle))
        s.add(dep)
        s.flush()
        dep_id = dep.id
    x, _ = images(30)
    log_predictions(ws, bundle, x[:20], deployment=dep_id)
    log_predictions(ws, bundle, x[20:])
    code, out = monitor("run", f"deployment:{dep_id}", "--json")
    report = json.loads(out[out.index("{") :])
    assert code == 0 and report["volume"]["predictions"] == 20
    assert report["deployment_id"] == dep_id
    code, out = monitor("run", "deployment:99999")
    assert code == 4 and "deployment 99999 is not in the registry" in out  # not found


def test_records_logged_under_a_deployment_slot_are_found(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    """A server following a slot logs under the slot's name (after a hot swap, whichever model
    it serves): the monitor of the model reads the folders of the slots it was put on too."""
    ws, reg, bundle = fresh
    from pomlia_hpc.registry import Model, Promotion

    with reg.session() as s:
        model_id = s.scalar(select(Model.id).where(Model.name == "blood"))
        assert model_id is not None
        s.add(Promotion(slot="ward", model_id=model_id, bundle_path=str(bundle), kind="promoted"))
    x, y = images(40)
    try:
        log_predictions(ws, bundle, x[:25], labels=y[:25], log_name="ward")
        log_predictions(ws, bundle, x[25:])
        code, out = monitor("run", "blood", "--json")
        report = json.loads(out[out.index("{") :])
        assert code == 0 and report["volume"]["predictions"] == 40
        assert report["performance"]["labels"] == 25
    finally:
        shutil.rmtree(log_dir(ws.path("logs"), "ward"), ignore_errors=True)


def test_bad_targets_and_options_are_one_clear_message(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    _ws, reg, _bundle = fresh
    before = n_rows(reg, MonitorReport)
    for args, message in (
        (["run", "nope"], "model 'nope' not found; known:"),
        (["run", "blood", "--window", "soon"], "--window 'soon' is not valid"),
        # The messages named internal keys ("duration '0h'", "permutations 0", "alpha 2.0"):
        # they name the flag and what is expected now.
        (["run", "blood", "--window", "0h"], "--window '0h' is not valid; expected a duration"),
        (["run", "blood", "--permutations", "0"], "--permutations 0: expected an integer >= 1"),
        # 1/(5+1) > 0.05: the MMD test could never alarm.
        (
            ["run", "blood", "--permutations", "5"],
            "--permutations 5: the MMD test's smallest p-value is then 1/6 = 0.167, above "
            "--alpha 0.05, so it could never alarm; expected at least 19",
        ),
        (["run", "blood", "--since", "yesterday"], "--since 'yesterday' is not a valid time"),
        (["run", "blood", "--alpha", "2"], "--alpha 2: expected a number between 0 and 1"),
        (["schedule", "blood", "--every", "0h"], "--every '0h' is not valid; expected a duration"),
        (
            ["schedule", "blood", "--every", "1d", "--window", "0m"],
            "--window '0m' is not valid; expected a duration",
        ),
        # Past timedelta's or datetime's range: OverflowError tracebacks, exit 70.
        (["run", "blood", "--window", "800000d"], "at most 365000d: a number and a unit"),
        (["schedule", "blood", "--every", "99999999999d"], "--every '99999999999d' is not"),
        (
            ["run", "blood", "--since", "0001-01-01T00:00", "--settle", "5m"],
            "the window (--since / --until / --window / --settle) reaches before year 1",
        ),
        (["show", "4242"], "monitor report 4242 is not in the registry"),  # exit 4
        (["history", "nope"], "model 'nope' not found; known:"),  # exit 4
        # An empty table (0) or every report (-1), where `runs list` refuses both.
        (
            ["history", "blood", "--limit", "0"],
            "--limit 0: expected an integer from 1 to 1,000,000,000",
        ),
        (["history", "blood", "--limit", "-1"], "--limit -1: expected an integer from 1 to"),
    ):
        code, out = monitor(*args)
        missing = "not in the registry" in message or "not found" in message
        assert code == (4 if missing else 2), (args, out)  # not found, bad input
        assert message in " ".join(out.split()), (args, out)
        assert "Traceback" not in out
    assert n_rows(reg, MonitorReport) == before


def test_schedule_without_slurm_says_so_and_gives_the_cron_line(
    fresh: tuple[Workspace, Registry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`monitor schedule M` on the default local profile ended with squeue's raw "Unable to
    contact slurm controller"; now it names the profile and prints the cron line that runs
    the monitor on this machine (docs/guide/monitor.md)."""
    ws, _reg, _bundle = fresh
    monkeypatch.delenv("POMLIA_CLUSTER", raising=False)
    code, out = monitor("schedule", "blood", "--at", "02:30", "--on-alarm", "echo 'alarm!'")
    text = " ".join(out.split())
    assert code == 2 and "Traceback" not in out, out
    assert "the cluster profile 'local' has the local backend: pass --cluster PROFILE" in text
    assert "squeue" not in text
    cron = text[text.index("hint: ") :]
    assert "30 2 * * * " in cron and " monitor run blood --window 1d" in cron
    assert "--on-alarm 'echo '\"'\"'alarm!'\"'\"''" in cron  # shell-quoted
    code, out = monitor("schedule", "blood", "--every", "12h")
    assert code == 2 and "this period has no single cron line" in " ".join(out.split())
    assert not ws.path("jobs", "monitor", "blood", "schedule.env").exists()


def test_missing_or_foreign_reference_says_how_to_create_it(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    _ws, _reg, bundle = fresh
    ref_path = bundle / REFERENCE_FILE
    original = ref_path.read_bytes()
    try:
        ref_path.unlink()
        code, out = monitor("run", "blood")
        text = " ".join(out.split())
        assert code == 4 and "has no monitoring reference" in text
        assert "pomlia monitor reference blood --data" in text
        # which data set fits: a MedMNIST one was refused for `model demo`'s class_0, ... labels
        assert "a data set with the model's" in text and "or unnamed" in text
        from dataclasses import replace

        from pomlia_hpc.serve.exported import ExportedBundle

        ref_path.write_bytes(original)
        ref = read_reference(ref_path)
        write_reference(ExportedBundle.open(bundle), replace(ref, model_version="000000000000"))
        code, out = monitor("run", "blood")
        text = " ".join(out.split())
        assert code == 2 and "version 000000000000" in text and "pomlia monitor reference" in text
        ref_path.write_bytes(b"PK\x03\x04 broken")
        code, out = monitor("run", "blood")
        text = " ".join(out.split())
        assert code == 2 and f"monitoring reference {ref_path} is damaged" in text
        assert "; recreate it with: pomlia monitor reference blood" in text
        # Not a zip at all: numpy's "pickled (object) data ... load it unsafely" is no help.
        ref_path.write_bytes(b"garbage, not a reference")
        code, out = monitor("run", "blood")
        text = " ".join(out.split())
        assert code == 2 and "is damaged (not an npz archive); recreate it with" in text
        assert "pickle" not in text and "unsafely" not in text
        code, out = monitor("reference", "blood")
        assert code == 2 and "records no training dataset" in " ".join(out.split())
    finally:
        ref_path.write_bytes(original)


def test_a_known_lineage_needs_no_data_in_the_hint(
    fresh: tuple[Workspace, Registry, Path], tmp_path: Path
) -> None:
    from pomlia_hpc.data.api import ingest
    from pomlia_hpc.registry import Model
    from tests.fixtures.factories import tiny_npz

    ws, reg, bundle = fresh
    ref_path = bundle / REFERENCE_FILE
    original = ref_path.read_bytes()
    rec = ingest(ws, reg, "blood-data", tiny_npz(tmp_path / "d.npz"), workers=1)
    with reg.session() as s:
        model = s.scalar(select(Model).where(Model.name == "blood"))
        assert model is not None
        lineage = model.lineage
        model.lineage = {**(lineage or {}), "dataset_version_id": rec.id}
    try:
        ref_path.unlink()
        code, out = monitor("run", "blood")
        text = " ".join(out.split())
        assert code == 4 and "has no monitoring reference" in text
        assert (
            f"create it with: pomlia monitor reference blood (from its training data "
            f"blood-data@{rec.version}, val split;" in text
        )
        assert "--data DATASET[@VERSION] [--split" not in text
    finally:
        ref_path.write_bytes(original)
        with reg.session() as s:
            model = s.scalar(select(Model).where(Model.name == "blood"))
            assert model is not None
            model.lineage = lineage


@pytest.mark.usefixtures("wide_console")
def test_a_slot_name_monitors_its_champion(fresh: tuple[Workspace, Registry, Path]) -> None:
    # `pomlia serve pneu` serves slot pneu; `monitor run pneu` said "model 'pneu' not found".
    ws, reg, bundle = fresh
    from pomlia_hpc.registry import Model, Promotion

    with reg.session() as s:
        model_id = s.scalar(select(Model.id).where(Model.name == "blood"))
        assert model_id is not None
        s.add(Promotion(slot="pneu", model_id=model_id, bundle_path=str(bundle), kind="initial"))
    x, _ = images(60)
    try:
        log_predictions(ws, bundle, x, log_name="pneu")
        code, out = monitor("run", "pneu")
        text = " ".join(out.split())
        assert code == 0, out
        assert "slot 'pneu' serves model 'blood': monitoring that model" in text
        assert "blood OK: 60 predictions" in text and "reasons" not in text
    finally:
        shutil.rmtree(log_dir(ws.path("logs"), "pneu"), ignore_errors=True)


def test_console_script_prints_one_line_without_traceback(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "monitor", "run", "nope"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 4 and "Traceback" not in proc.stderr  # not found
    assert proc.stderr.startswith("error: model 'nope' not found; known:"), proc.stderr


def test_report_page_in_headless_chromium(
    fresh: tuple[Workspace, Registry, Path], browser: Browser, tmp_path: Path
) -> None:
    """The HTML report as a person sees it: it loads offline, every plot decodes, the console
    stays clean; a page with a broken image fails the same check (the check can fail)."""
    ws, _reg, bundle = fresh
    x, y = images(120)
    log_predictions(ws, bundle, x, labels=y)
    foreign, _ = make_split("dermamnist", 80, size=28)
    log_predictions(ws, bundle, foreign, keep_inputs=True)
    code, out = monitor("run", "blood", "--json")
    report = json.loads(out[out.index("{") :])
    assert code == 1 and report["alarm"]
    html_path = report_dir(ws, "blood")[-1] / "report.html"
    page = browser.check(html_path)
    assert page.title.startswith("pomlia monitor: blood")
    assert "Monitoring report: blood" in page.text and "mmd" in page.text
    assert len(page.images) >= 6, page.images
    assert "least typical recent inputs" in [i["alt"] for i in page.images]
    # The least typical inputs are the foreign ones (the only ones kept here anyway).
    assert len(report["least_typical"]) == 16
    assert page.broken_images == [], page.broken_images
    assert all(i["naturalWidth"] > 100 and i["naturalHeight"] > 50 for i in page.images)
    assert page.console_errors == [], page.console_errors
    browser.screenshot(Path(os.environ.get("POMLIA_TEST_SHOTS", tmp_path)) / "report.png")
    # The same check on a page with a missing image and a script error must complain.
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<html><head><title>bad</title></head><body><img src='missing.png' alt='x'>"
        "<script>undefinedFunction()</script></body></html>"
    )
    page = browser.check(bad)
    assert len(page.broken_images) == 1 and page.console_errors


#: A monitor run in a child process that dies (SIGKILL-like: nothing runs after) at the commit
#: of the transaction that adds its report's row: before it ("before_commit") or after it
#: ("after_commit"). Told by SQLAlchemy's session events, not by pomlia's functions, so the
#: same child kills any order of the steps.
KILLED_RUN = """
import os, runpy, sys
from sqlalchemy import event
from sqlalchemy.orm import Session
from pomlia_hpc.registry import MonitorReport

@event.listens_for(Session, "after_flush")
def mark(session, _ctx):
    if any(isinstance(o, MonitorReport) for o in session.new):
        session.info["report"] = True

@event.listens_for(Session, sys.argv[1])
def die(session):
    if session.info.get("report"):
        os._exit(9)

sys.argv = ["pomlia", "monitor", "run", "blood"]
runpy.run_module("pomlia_hpc", run_name="__main__")
"""


def recorded_folders(reg: Registry, model: str) -> set[str]:
    """The report folders that rows of ``model``'s reports name."""
    with reg.session() as s:
        paths = s.scalars(select(MonitorReport.report_path)).all()
    return {Path(p).parent.name for p in paths if Path(p).parent.parent.name == model}


@pytest.mark.parametrize("when", ["before_commit", "after_commit"])
def test_a_run_killed_at_its_commit_leaves_folder_and_row_together(
    fresh: tuple[Workspace, Registry, Path], when: str
) -> None:
    """A kill between publishing a report's folder and committing its row left a folder
    without a row, for good. Now the folder is staged, the row committed, then the folder
    renamed; whatever a kill leaves is settled by the next run: a staged folder without a row
    is removed, one with its row is published."""
    import subprocess
    import sys

    ws, reg, _bundle = fresh
    rows_before = n_rows(reg, MonitorReport)
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, when],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 9, proc.stderr
    assert n_rows(reg, MonitorReport) == rows_before + (when == "after_commit")
    shown = {p.name for p in report_dir(ws, "blood")}
    # Right after the kill nothing is visible without its row (a row may wait for its folder).
    assert shown <= recorded_folders(reg, "blood"), (when, shown)
    code, out = monitor("run", "blood")
    assert code == 0, out
    shown = {p.name for p in report_dir(ws, "blood")}
    assert shown == recorded_folders(reg, "blood"), when
    assert all((ws.path("reports", "blood", name) / "report.html").is_file() for name in shown)
    assert not [p for p in ws.path("reports", "blood").iterdir() if p.name.startswith(".")]


def test_a_failed_rename_after_the_commit_takes_the_row_back(
    fresh: tuple[Workspace, Registry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error between the row's commit and the folder's rename: one message, and neither
    the row nor its retrain request nor a folder, staged or final, is left."""
    from pomlia_hpc.monitor import publish

    ws, reg, bundle = fresh
    foreign, _ = make_split("pathmnist", 100, size=28)
    log_predictions(ws, bundle, foreign)  # an alarm: its retrain request goes with the row
    before = (n_rows(reg, MonitorReport), n_rows(reg, RetrainRequest), report_dir(ws, "blood"))

    def refused(staged: Path, target: Path, **_kw: object) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publish, "publish_dir", refused)
    code, out = monitor("run", "blood")
    said = " ".join(out.split())
    assert code == 2 and "could not be published (No space left on device)" in said, said
    assert "Traceback" not in said
    after = (n_rows(reg, MonitorReport), n_rows(reg, RetrainRequest), report_dir(ws, "blood"))
    assert after == before
    assert not [p for p in ws.path("reports", "blood").iterdir() if p.name.startswith(".")]


def report_dir(ws: Workspace, model: str) -> list[Path]:
    return sorted(p for p in ws.path("reports", model).iterdir() if not p.name.startswith("."))


def test_body_timeouts_are_transport_failures_not_refused_data(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    """A 408 (the body did not arrive in time) says nothing about the images: it was counted
    as an "undecodable" refusal ("47.0% of requests were refused (undecodable 345)"). Now it is
    a transport failure, apart from the refused share, also as older servers logged it."""
    ws, _reg, bundle = fresh
    x, _ = images(60)
    records = log_predictions(ws, bundle, x, one_request=False)
    (first,) = log_dir(ws.path("logs"), "blood").glob("*.jsonl")
    at = {"time": records[0]["time"], "model": "blood"}
    timeouts = [log_line("rejection", status=408, reason="timeout", **at) for _ in range(20)]
    old = [log_line("rejection", status=408, reason="undecodable", **at) for _ in range(10)]
    append_lines(first, *timeouts, *old, log_line("rejection", **at))
    code, out = monitor("run", "blood", "--json")
    assert code == 0, out
    quality = json.loads(out[out.index("{") :])["quality"]
    assert quality["rejections_by_reason"] == {"wrong-size": 1}
    assert quality["rejected_share"] == pytest.approx(1 / 61)
    assert quality["transport_failures_by_reason"] == {"timeout": 30}
    assert quality["transport_failures"] == 30 and quality["requests"] == 91
    warnings = " ".join(quality["warnings"])
    assert "were refused" not in warnings
    assert "33.0% of requests failed in transport (timeout 30" in warnings


def test_the_refused_warning_counts_every_reason(fresh: tuple[Workspace, Registry, Path]) -> None:
    """The warning named the three commonest reasons only: its counts did not add up to the
    refusals, and a fourth reason (bad-values) was not said at all."""
    ws, _reg, bundle = fresh
    x, _ = images(60)
    records = log_predictions(ws, bundle, x, one_request=False)
    (first,) = log_dir(ws.path("logs"), "blood").glob("*.jsonl")
    at = {"time": records[0]["time"], "model": "blood"}
    reasons = {"unsupported-type": 4, "wrong-size": 2, "wrong-channels": 1, "bad-values": 1}
    append_lines(
        first,
        *(log_line("rejection", reason=r, **at) for r, n in reasons.items() for _ in range(n)),
    )
    code, out = monitor("run", "blood", "--json")
    assert code == 0, out
    quality = json.loads(out[out.index("{") :])["quality"]
    assert quality["rejections_by_reason"] == reasons
    assert (
        "11.8% of requests were refused (unsupported-type 4, wrong-size 2, wrong-channels 1, "
        "bad-values 1)"
    ) in quality["warnings"]


HOLDER = """
import sys
from pathlib import Path
from pomlia_hpc.monitor.runlock import monitor_lock
from pomlia_hpc.workspace import Workspace
home = Path(sys.argv[1])
ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
with monitor_lock(ws, "blood", "slot:nightly", print):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_of_one_model_at_once_is_refused_until_the_first_is_gone(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    """Cron and a person ran `monitor run SLOT` at once: two reports of one window, and an
    alarm would have run --on-alarm twice. A second run is refused (exit 3, busy, as every
    refusal while another process holds the work; nothing recorded) naming the first; a
    killed first run holds nothing."""
    ws, reg, bundle = fresh
    log_predictions(ws, bundle, images(50)[0])
    before = n_rows(reg, MonitorReport)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ws.home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, out = monitor("run", "blood")
        said = " ".join(out.split())
        assert code == BUSY_EXIT, said
        assert (
            f"monitor run 'blood': another monitor run is testing model 'blood' now, pid "
            f"{holder.pid} on "
        ) in said and "monitoring 'slot:nightly'" in said, said
        assert n_rows(reg, MonitorReport) == before
    finally:
        holder.kill()  # as kill -9: the kernel drops its lock
        holder.wait()
    code, out = monitor("run", "blood")
    assert code == 0 and n_rows(reg, MonitorReport) == before + 1, out


def test_run_and_show_print_one_report_as_one_document(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    """`monitor run --json` printed the report in the order it was built, `monitor show
    --json` as its file keeps it (keys sorted): the same record in two shapes, so a script
    that compared or diffed them saw a change where there was none."""
    ws, reg, bundle = fresh
    x, _ = images(60)
    log_predictions(ws, bundle, x)
    ran = runner.invoke(app, ["monitor", "run", "blood", "--json"])
    assert ran.exit_code in (0, 1), ran.output
    with reg.session() as s:
        newest = s.scalar(select(func.max(MonitorReport.id)))
    shown = runner.invoke(app, ["monitor", "show", str(newest), "--json"])
    assert shown.exit_code == 0, shown.output
    assert ran.stdout == shown.stdout


def test_run_json_prints_the_report_after_a_hook_that_archives_it(
    fresh: tuple[Workspace, Registry, Path], tmp_path: Path
) -> None:
    """`monitor run --json` read the report back from its file after the `--on-alarm` command
    had run: a hook that moves the report away (an archive) made it fail with no JSON on an
    alarm. It prints the report as the file first held it."""
    ws, _, bundle = fresh
    log_predictions(ws, bundle, images(100)[0])
    log_predictions(ws, bundle, make_split("pathmnist", 100, size=28)[0])
    archived = tmp_path / "archived.json"
    code, out = monitor(
        "run", "blood", "--json", "--on-alarm", f'mv "$POMLIA_REPORT_JSON" {archived}'
    )
    assert code == 1, out
    assert json.loads(out[out.index("{") :]) == json.loads(archived.read_text())
