"""``--json`` of the list commands: one JSON array on stdout, one object per row, with the keys
each command's --help documents (stable: scripts rely on them)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cli.app import console
from pomlia_hpc.errors import NotFoundError
from pomlia_hpc.registry import Job, Model, MonitorReport, Registry, Run, Task
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset

KEYS = {
    ("data", "list"): "name version parent n_images task_type n_classes image_size channels "
    "created_at store_path current",
    ("task", "list"): "id name dataset task_type metric",
    ("runs", "list"): "id task study status epochs config val test objective cost_s "
    "train_s job scheduler_id error cause traceback created_at software history",
    ("model", "list"): "id name task dataset run_id study arch metric test_score test_n exported "
    "code_version created_at",
    ("jobs", "list"): "id name backend scheduler_id state requeue_count submitted_at ended_at "
    "exit_cause folder",
}


@pytest.fixture
def filled(workspace: Workspace, reg: Registry) -> Workspace:
    """One row of each kind: a dataset version, a task, a run with its job, a model."""
    from pomlia_hpc.data.store import find_version

    ref = make_dataset(workspace, reg, "blood", sizes=(8, 4, 4))
    version_id = find_version(reg, ref).id
    with reg.session() as s:
        task = Task(name="t", dataset_version_id=version_id, metric="acc", task_type="x")
        s.add(task)
        job = Job(id=7, backend="local", scheduler_id="42", name="trial", state="COMPLETED")
        job.ended_at = datetime.now(UTC)
        s.add(job)
        s.flush()
        run = Run(
            task_id=task.id,
            study="st",
            config={"arch": "small_cnn"},
            budget=1,
            status="ok",
            metrics={"objective": 0.5, "val": {"acc": 0.5}, "test": {"acc": 0.4}}
            | {"history": [{"epoch": 1.0, "train_loss": 2.25, "seconds": 0.5}]},
            cost_s=2.0,
            job_id=job.id,
        )
        s.add(run)
        s.flush()
        s.add(
            Model(
                name="m",
                task_id=task.id,
                run_id=run.id,
                path="/m.pt",
                lineage={"study": "st", "metric": "acc", "dataset": ref},
                card={"metrics": {"test": {"acc": 0.4}}, "architecture": "small_cnn"},
            )
        )
    return workspace


@pytest.mark.parametrize("command", sorted(KEYS))
def test_list_json_has_the_documented_keys(filled: Workspace, command: tuple[str, str]) -> None:
    res = CliRunner().invoke(app, [*command, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert isinstance(rows, list) and len(rows) == 1, rows
    assert list(rows[0]) == KEYS[command].split()  # the documented keys, in order
    helped = " ".join(CliRunner().invoke(app, [*command, "--help"]).output.split())
    assert "--json" in helped
    for key in KEYS[command].split():  # --help lists every key
        assert key in helped, (command, key)


def test_list_json_values(filled: Workspace) -> None:
    def rows(*args: str) -> list[dict[str, object]]:
        res = CliRunner().invoke(app, [*args, "--json"])
        assert res.exit_code == 0, res.output
        return list(json.loads(res.stdout))

    (run,) = rows("runs", "list")
    assert run["val"] == {"acc": 0.5} and run["objective"] == 0.5
    # the losses per epoch, which docs/guide/reproducibility.md compares run by run
    assert run["history"] == [{"epoch": 1.0, "train_loss": 2.25, "seconds": 0.5}]
    # `job` is the registry's id, the one `pomlia jobs show/cancel` take; Slurm's id beside it
    (job_row,) = rows("jobs", "list")
    assert run["job"] == job_row["id"] == 7 and run["scheduler_id"] == "42"
    table = " ".join(CliRunner().invoke(app, ["runs", "list"]).output.split())
    assert f"│ {job_row['id']} │" in table and "│ 42 │" not in table
    (model,) = rows("model", "list")
    assert model["test_score"] == 0.4 and model["arch"] == "small_cnn" and model["exported"] is None
    (job,) = rows("jobs", "list")
    assert job["state"] == "COMPLETED" and str(job["submitted_at"]).endswith("+00:00")
    (version,) = rows("data", "list")
    assert version["image_size"] == [28, 28] and version["parent"] is None


@pytest.mark.parametrize(
    "command",
    [("model", "list"), ("runs", "list"), ("jobs", "list"), ("status",), ("strategy", "outcomes")],
)
def test_a_limit_below_one_is_refused_naming_the_flag(
    filled: Workspace, command: tuple[str, ...]
) -> None:
    """`model list --limit 0` printed an empty table; `runs list --limit 0` said "limit 0";
    `status --limit -1` listed every job (`monitor history`: tests/test_monitor_run.py)."""
    # 10**20: past a database's LIMIT, an OverflowError traceback
    for limit in ("0", "-1", "1000000001", "100000000000000000000"):
        res = CliRunner().invoke(app, [*command, "--limit", limit])
        assert res.exit_code != 0
        assert f"--limit {limit}: expected an integer from 1 to 1,000,000,000" in str(res.exception)


def test_missing_values_are_null_and_the_error_whole(filled: Workspace, reg: Registry) -> None:
    """A run without task, study or job came out with "" for each (the docs promise null), and
    its error cut to the first line; a model without lineage is all null too."""
    with reg.session() as s:
        s.add(Run(config={}, status="crashed", error="Traceback (most recent call last):\n  boom"))
        s.add(Model(name="bare", path="/b.pt"))

    def first(*args: str) -> dict[str, object]:
        res = CliRunner().invoke(app, [*args, "--json"])
        assert res.exit_code == 0, res.output
        return dict(json.loads(res.stdout)[0])  # newest first

    run = first("runs", "list")
    missing = ("task", "study", "job", "epochs", "cost_s", "val")
    assert {k: run[k] for k in missing} == dict.fromkeys(missing)
    assert run["error"] == "Traceback (most recent call last):\n  boom"
    model = first("model", "list")
    for key in ("task", "dataset", "run_id", "study", "arch", "metric", "test_score"):
        assert model[key] is None, (key, model)
    table = " ".join(CliRunner().invoke(app, ["runs", "list"]).output.split())
    assert "None" not in table and "boom" not in table  # the table keeps the first line


def test_a_filter_naming_nothing_is_an_error_not_an_empty_list(filled: Workspace) -> None:
    """`model list --task nosuch` printed an empty table (exit 0) where `runs list --task
    nosuch` says the task is not found; so did `data list nosuch` and `loop show nosuch`.
    Each names what was not found and what is known, exit 2; a known name still lists."""
    for args, expected in (
        (["model", "list", "--task", "nosuch"], "task 'nosuch' not found; known: t"),
        (["data", "list", "nosuch"], "dataset 'nosuch' not found; known: blood"),
        (["loop", "show", "nosuch"], "slot 'nosuch' not found; known: none"),
    ):
        res = CliRunner().invoke(app, [*args, "--json"] if args[1] == "list" else args)
        assert isinstance(res.exception, NotFoundError), (args, res.output)
        assert str(res.exception).startswith(expected), args
    for args, n in ((["model", "list", "--task", "t"], 1), (["data", "list", "blood"], 1)):
        res = CliRunner().invoke(app, [*args, "--json"])
        assert res.exit_code == 0 and len(json.loads(res.output)) == n, res.output


@pytest.mark.usefixtures("wide_console")
def test_an_undefined_metric_reads_n_a(filled: Workspace, reg: Registry) -> None:
    """`runs list` left AUC out of a run whose validation split had one class (AUC undefined,
    recorded None) as if it had not been computed; the table says `auc n/a` now, and --json
    keeps the key with null."""
    with reg.session() as s:
        val = {"acc": 0.75, "auc": None, "f1_macro": 0.5}
        s.add(Run(config={}, status="ok", metrics={"val": val, "test": {"acc": 0.5}}))
    table = " ".join(CliRunner().invoke(app, ["runs", "list"]).output.split())
    assert "acc 0.750 auc n/a f1_macro 0.500" in table, table
    res = CliRunner().invoke(app, ["runs", "list", "--json"])
    newest = json.loads(res.stdout)[0]
    assert newest["val"] == {"acc": 0.75, "auc": None, "f1_macro": 0.5}, newest


@pytest.mark.usefixtures("wide_console")
def test_a_run_s_metrics_show_how_many_images_they_were_computed_on(
    filled: Workspace, reg: Registry
) -> None:
    """`runs list` showed an AUC of 1.000 computed on 2 test images like one computed on 400:
    each split's metrics now end with the count the run recorded (`n`); a record without it
    (older runs) shows none."""
    with reg.session() as s:
        test = {"acc": 1.0, "auc": 1.0, "f1_macro": 1.0, "n": 2, "auc_classes": 1}
        s.add(Run(config={}, status="ok", metrics={"val": {"acc": 0.5}, "test": test}))
    table = " ".join(CliRunner().invoke(app, ["runs", "list"]).output.split())
    assert "acc 1.000 auc 1.000 f1_macro 1.000 (n=2)" in table, table
    assert "acc 0.500 " in table and "acc 0.500 (n=" not in table, table


def test_monitor_history_json_has_the_table_fields(filled: Workspace, reg: Registry) -> None:
    """`monitor history` had no --json, unlike the other lists: its rows as one JSON array,
    the table's columns as keys, numbers as recorded (not the table's rounding)."""
    with reg.session() as s:
        model_id = s.scalars(select(Model.id).where(Model.name == "m")).one()
        metrics = {"status": "alarm", "predictions": 120, "performance": {"labels": 30}}
        metrics["performance"]["accuracy"] = 0.123456
        s.add(MonitorReport(model_id=model_id, metrics=metrics, triggered=True, report_path="/r"))
        s.add(MonitorReport(model_id=model_id, metrics={}, report_path="/q"))
    res = CliRunner().invoke(app, ["monitor", "history", "m", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    keys = HISTORY_KEYS.split()
    assert [list(r) for r in rows] == [keys, keys], rows
    empty, full = rows  # newest first
    assert full["accuracy"] == 0.123456 and full["predictions"] == 120 and full["labels"] == 30
    assert full["alarm"] is True and full["status"] == "alarm" and full["path"] == "/r"
    assert empty["accuracy"] is None and empty["alarm"] is False
    helped = " ".join(CliRunner().invoke(app, ["monitor", "history", "--help"]).output.split())
    assert "--json" in helped and all(k in helped for k in keys), helped


def test_monitor_history_shows_each_window_and_the_gaps_between_them(
    filled: Workspace, reg: Registry
) -> None:
    """A month of nightly reports (or a backfill run in one go) listed only when each was
    created: which night a report tested, and which nights none did, could not be read."""
    nights = ["2026-11-20", "2026-11-21", "2026-11-23", "2026-11-21"]  # the 22nd missed; a rerun
    with reg.session() as s:
        model = Model(name="nightly", path="/n.pt")  # its own: the other tests count m's rows
        s.add(model)
        s.flush()
        model_id = model.id
        for day in nights:
            since = f"{day}T00:00:00+00:00"
            until = f"{day[:-2]}{int(day[-2:]) + 1}T00:00:00+00:00"
            metrics = {"status": "ok", "window": {"since": since, "until": until}}
            s.add(MonitorReport(model_id=model_id, metrics=metrics, report_path="/w"))
    res = CliRunner().invoke(app, ["monitor", "history", "nightly"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "11-23 00:00 → 11-24 00:00" in text
    assert "note: no listed report tested 2026-11-22 00:00 → 2026-11-23 00:00" in text, text
    out = CliRunner().invoke(app, ["monitor", "history", "nightly", "--json"]).stdout
    rows = json.loads(out)
    assert rows[0]["since"] == "2026-11-21T00:00:00+00:00"
    assert rows[0]["until"] == "2026-11-22T00:00:00+00:00"


#: The keys of `monitor history MODEL --json` (checked against the command above).
HISTORY_KEYS = (
    "id created_at since until status predictions labels accuracy metric metric_value "
    "reference_value reference_n alarm path"
)


def documented_keys() -> dict[tuple[str, ...], list[str]]:
    """The keys docs/guide/README.md ("Lists as JSON") lists per command, explanations in
    parentheses left out."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "README.md").read_text()
    out = {}
    for command, cell in re.findall(r"^\| `pomlia ([^`]+) --json` \| (.*) \|$", text, re.M):
        while re.search(r"\([^()]*\)", cell):
            cell = re.sub(r"\([^()]*\)", "", cell)
        out[tuple(w for w in command.split() if w != "MODEL")] = [
            k.strip() for k in cell.split(",")
        ]
    return out


def test_the_guide_lists_the_keys_each_command_gives() -> None:
    """docs/guide/README.md's `data list --json` keys left out `current`, which the command
    gives and its --help lists; the guide's lists are the keys checked above, in order."""
    expected = {command: keys.split() for command, keys in KEYS.items()}
    expected["monitor", "history"] = HISTORY_KEYS.split()
    assert documented_keys() == expected


def cells(output: str, first: str) -> list[str]:
    """The cells of the table row of ``output`` whose first cell is ``first``."""
    for line in output.splitlines():
        parts = [c.strip() for c in line.strip().strip("│").split("│")]
        if parts and parts[0] == first:
            return parts
    raise AssertionError(output)


@pytest.mark.usefixtures("wide_console")
def test_missing_values_read_the_marker_in_tables(filled: Workspace, reg: Registry) -> None:
    """`model list` showed `-` for a model without task, but blank cells for its dataset,
    run, study and metric; `monitor history` blank labels and accuracy for a report of an
    empty window. Every missing value in these tables reads `-` now."""
    with reg.session() as s:
        bare = Model(name="bare", path="/b.pt")
        s.add(bare)
        s.flush()
        s.add(MonitorReport(model_id=bare.id, metrics={"status": "ok"}, report_path="/e"))
        bare_id = bare.id
    models = CliRunner().invoke(app, ["model", "list"])
    assert models.exit_code == 0, models.output
    # id name task dataset run study arch metric exported code (created)
    assert cells(models.output, str(bare_id))[2:10] == ["-"] * 8
    history = CliRunner().invoke(app, ["monitor", "history", "bare"])
    assert history.exit_code == 0, history.output
    row = cells(history.output, "1")
    # id created window status predictions labels accuracy alarm path
    assert [row[2], row[3], *row[4:7]] == ["-", "ok", "-", "-", "-"], row


@pytest.mark.usefixtures("wide_console")
def test_more_missing_values_read_the_marker(filled: Workspace, reg: Registry) -> None:
    """`data list` parent, `runs list` task/study/job/error, `jobs list` ended and `deploy
    history` gate/loop run were blank cells, where the guide promises `-`."""
    from pomlia_hpc.registry import Promotion

    with reg.session() as s:
        job = Job(backend="local", scheduler_id="43", name="running", state="RUNNING")
        s.add(job)
        run = Run(config={"arch": "small_cnn"}, budget=1, status="crashed", cost_s=0.0)
        s.add(run)
        model_id = s.scalars(select(Model.id)).one()
        s.add(Promotion(slot="sl", model_id=model_id, bundle_path="/b", kind="initial"))
        s.flush()
        job_id, run_id = job.id, run.id
    data = CliRunner().invoke(app, ["data", "list"])
    assert data.exit_code == 0, data.output
    assert cells(data.output, "blood")[2] == "-"  # name version parent
    runs = CliRunner().invoke(app, ["runs", "list"])
    assert runs.exit_code == 0, runs.output
    row = cells(runs.output, str(run_id))
    # id task study configuration epochs status val test cost job error
    assert [row[1], row[2], row[8], row[9], row[10]] == ["-", "-", "0.0", "-", "-"], row
    jobs = CliRunner().invoke(app, ["jobs", "list"])
    assert jobs.exit_code == 0, jobs.output
    assert cells(jobs.output, str(job_id))[7:9] == ["-", "-"]  # ended, exit cause
    history = CliRunner().invoke(app, ["deploy", "history", "sl"])
    assert history.exit_code == 0, history.output
    assert cells(history.output, "1")[4:6] == ["-", "-"]  # gate, loop run


def test_narrow_runs_list_shows_a_cost_of_zero_and_one_epoch(
    filled: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrow form hid a cost of 0.0 (`if r.cost_s`) and said "1 epochs"."""
    with reg.session() as s:
        s.add(Run(config={"arch": "small_cnn"}, budget=1, status="crashed", cost_s=0.0))
    # the console's width is set when the CLI is imported (COLUMNS then, or 200 off a
    # terminal): an 80-column console here, whatever the environment of the test run
    monkeypatch.setattr(console, "width", 80)
    res = CliRunner().invoke(app, ["runs", "list"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "0.0 s" in text and "1 epoch" in text and "1 epochs" not in text, res.output


def guide_keys(command: tuple[str, ...]) -> list[str]:
    """The keys the user guide's "Lists as JSON" table gives for ``pomlia COMMAND --json``, in
    order: the table's words outside parentheses (which explain a key), comma-separated."""
    guide = Path(__file__).resolve().parents[1] / "docs" / "guide" / "README.md"
    row = f"| `pomlia {' '.join(command)} --json` |"
    (line,) = [ln for ln in guide.read_text().splitlines() if ln.startswith(row)]
    cell, depth = "", 0
    for ch in line.removeprefix(row).rstrip("| "):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        cell += ch if depth == 0 and ch != ")" else ""
    return [k.strip() for k in cell.split(",")]


@pytest.mark.parametrize("command", sorted(KEYS))
def test_the_guide_names_the_keys(command: tuple[str, str]) -> None:
    """docs/guide/README.md's table of --json keys is what the commands print: it lacked a
    key the product added (`runs list`'s history) and a user reading it could not know."""
    assert guide_keys(command) == KEYS[command].split()
