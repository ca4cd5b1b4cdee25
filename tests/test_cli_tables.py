"""Tables of the ``pomlia`` command at narrow widths and off a terminal: words stay whole, an
invalid COLUMNS is ignored, a title longer than its table stays one line.

How ``COLUMNS`` sets the width is read when a process starts (its consoles are made at import):
that is checked in processes of their own (``pomlia``). The layouts at a given width are
checked in this process (``pomlia_at``: the console script's entry point, its stdout console
set to that width), which lays them out as a process of its own would, without the seconds of
CPU a process start costs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.table import Table

from pomlia_hpc.cli.app import MessageConsole, console
from pomlia_hpc.registry import GateDecision, Job, Model, MonitorReport, Promotion, Registry, Run
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main
from tests.fixtures.factories import tiny_dataset

REPO = Path(__file__).resolve().parents[1]
#: What would make rich take the output for a terminal, or point elsewhere.
UNSET = ("COLUMNS", "POMLIA_DB_URL", "POMLIA_CLUSTER", "FORCE_COLOR", "TTY_COMPATIBLE")


def pomlia(home: Path, *args: str, columns: str | None = None) -> str:
    """stdout of ``pomlia --home HOME ARGS`` in its own process (a file, not a terminal),
    with ``COLUMNS`` set to ``columns`` (unset when None); fails unless it exits 0."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["PYTHONPATH"] = str(REPO)
    if columns is not None:
        env["COLUMNS"] = columns
    res = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "--home", str(home), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


Width = Callable[..., str]


@pytest.fixture
def pomlia_at(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Width:
    """``pomlia_at(home, *args, columns=W)``: stdout of ``pomlia --home HOME ARGS`` run in this
    process through the console script's entry point, off a terminal, with its stdout console
    ``W`` columns wide (as ``COLUMNS=W`` makes it in a process of its own, see ``pomlia``);
    fails unless it exits 0."""
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)

    def run(home: Path, *args: str, columns: str) -> str:
        monkeypatch.setattr(console, "width", int(columns))
        code, out, err = pomlia_main(monkeypatch, capsys, "--home", str(home), *args)
        assert code == 0, err
        return out

    return run


def some_jobs_and_runs(reg: Registry) -> None:
    """Three ended jobs and two runs, with the values the tester saw split."""
    when = datetime(2026, 12, 5, 4, 31, 7, tzinfo=UTC)
    with reg.session() as s:
        for i, (name, state, cause) in enumerate(
            (
                ("fingerprint-train-ae9", "COMPLETED", None),
                ("extract-ae9-pathmnist", "FAILED", "RuntimeError: CUDA out of memory"),
                ("trial-demo-17", "CANCELLED", "cancelled by the user"),
            )
        ):
            s.add(
                Job(
                    backend="slurm",
                    scheduler_id=f"{123456 + i}_{i}",
                    name=name,
                    state=state,
                    submitted_at=when,
                    ended_at=when,
                    exit_cause=cause,
                )
            )
        s.flush()
        for _ in range(2):
            s.add(
                Run(
                    study="demo-study",
                    config={"arch": "resnet18", "lr": 0.001, "batch_size": 64},
                    budget=3,
                    metrics={"val": {"f1_macro": 0.8123}, "test": {"f1_macro": 0.79}},
                    cost_s=12.5,
                    status="completed",
                    job_id=1,
                )
            )
        s.commit()


def cells(out: str) -> set[str]:
    """The stripped lines of the cells of a table printed in ``out``."""
    words = {w for line in out.splitlines() for w in line.replace("┃", "│").split("│")}
    return {w.strip() for w in words}


def test_tables_keep_ids_states_times_and_metric_names_whole(
    workspace: Workspace, reg: Registry, pomlia_at: Width
) -> None:
    """At COLUMNS=80 `jobs list` showed COMPLE/TED, backen/d, schedu/ler id and 2026-1/2-05,
    `runs list` f1_ma/cro; at 40 `data list` was one letter per line. Every word stays whole
    now (a table too wide for its words is printed wider than the console). The first listing
    runs in a process of its own, COLUMNS=80 in its environment; the others in this one."""
    some_jobs_and_runs(reg)
    jobs = pomlia(workspace.home, "jobs", "list", columns="80")
    words = cells(jobs)
    for token in ("COMPLETED", "CANCELLED", "FAILED", "scheduler id", "123458_2", "12-05 04:31"):
        assert token in words, jobs
    assert "fingerprint-train-ae9" in words, jobs
    assert "2026-12-05 04:31:07" in cells(pomlia_at(workspace.home, "jobs", "list", columns="200"))
    runs = pomlia_at(workspace.home, "runs", "list", columns="80")
    assert "f1_macro" in runs and "demo-study" in runs and "completed" in runs, runs
    narrow = pomlia_at(workspace.home, "jobs", "list", columns="40")
    assert "COMPLETED" in narrow and "fingerprint-train-ae9" in narrow, narrow


def test_list_commands_fit_80_columns_with_ids_states_and_times_whole(
    workspace: Workspace, reg: Registry, pomlia_at: Width
) -> None:
    """Once their words were kept whole, `jobs list` at COLUMNS=80 printed 97-119 columns,
    `data list` 106, `runs list` 110, `model list` 158 and `monitor history` 97: lists now
    have a narrow form (fewer columns, values stacked, times as MM-DD HH:MM)."""
    some_jobs_and_runs(reg)
    tiny_dataset(workspace, reg, "pneumoniamnist", "pneumoniamnist", sizes=(16, 8, 8))
    with reg.session() as s:
        job = s.get(Job, 2)
        assert job is not None
        job.requeue_count = 2
        job.exit_cause = (
            "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 39.59 GiB)"
        )
        model = Model(
            name="pneumoniamnist-best-1",
            run_id=1,
            path="/x",
            lineage={
                "dataset": "pneumoniamnist@296499f1692ab6e5",
                "study": "demo-study",
                "metric": "f1_macro",
                "code_version": {"commit": "7930a5c1d2e3-dirty"},
            },
            card={
                "architecture": "resnet18",
                "metrics": {"test": {"f1_macro": 0.8123}},
                "export": {"version": "0123456789abcdef"},
            },
            created_at=datetime(2026, 12, 5, 4, 31, 7, tzinfo=UTC),
        )
        s.add(model)
        s.flush()
        s.add(
            MonitorReport(
                model_id=model.id,
                report_path=str(workspace.home / "monitor" / "pneumoniamnist-best-1" / "r.json"),
                triggered=True,
                metrics={"status": "alarm", "predictions": 12345, "performance": {"labels": 321}},
                created_at=datetime(2026, 12, 5, 4, 31, 7, tzinfo=UTC),
            )
        )
        s.commit()
    wanted = {
        ("jobs", "list"): ["123457_1", "FAILED", "2 requeues", "CANCELLED", "12-05 04:31"],
        ("status",): ["123458_2", "COMPLETED", "12-05 04:31"],
        ("data", "list"): ["pneumoniamnist"],
        ("runs", "list"): ["demo-study", "completed", "3 epochs"],
        ("model", "list"): ["pneumoniamnist-best-1", "@296499f1692ab6e5", "12-05 04:31"],
        ("monitor", "history", "pneumoniamnist-best-1"): ["12-05 04:31", "alarm", "12345"],
    }
    for args, tokens in wanted.items():
        out = pomlia_at(workspace.home, *args, columns="80")
        table = [line for line in out.splitlines() if line.strip()[:1] in set("┏┃┡│└")]
        assert table and max(len(line) for line in table) <= 80, out  # status's paths are not
        for token in tokens:
            assert token in cells(out), (args, token, out)
    version = pomlia_at(workspace.home, "data", "list", "--json", columns="200")
    assert version.split('"version": "')[1][:16] in " ".join(
        pomlia_at(workspace.home, "data", "list", columns="80").split()
    )


def test_an_invalid_columns_is_ignored_off_a_terminal(workspace: Workspace, reg: Registry) -> None:
    """COLUMNS=abc, 0 or -5 gave 80-column tables in files and pipes, where the README
    promises 200 columns; such a value is ignored now."""
    some_jobs_and_runs(reg)

    def one_line_rows(out: str) -> bool:  # a 100-character table, unfolded
        lines = out.splitlines()
        header = any("scheduler id" in ln and "exit cause" in ln for ln in lines)
        return header and any("RuntimeError: CUDA out of memory" in ln for ln in lines)

    for columns in ("abc", "0", "-5", None):
        assert one_line_rows(pomlia(workspace.home, "jobs", "list", columns=columns)), columns
    assert not one_line_rows(pomlia(workspace.home, "jobs", "list", columns="80"))


def test_a_title_longer_than_its_table_stays_one_line_off_a_terminal() -> None:
    """`fingerprint train ... > out.txt` wrapped the summary's title inside the table's width
    ("encoder ae9 (id 1, objective" / "contrastive)"), where off a terminal nothing is."""
    out = io.StringIO()
    console = MessageConsole(file=out, width=200, force_terminal=False)
    title = "encoder ae9 (id 1, objective contrastive, 2 epochs on 6 datasets)"
    table = Table(title=title)
    table.add_column("epoch")
    table.add_column("loss")
    table.add_row("1", "0.0123")
    console.print(table)
    lines = out.getvalue().splitlines()
    assert lines[0].strip() == title, out.getvalue()
    assert any("0.0123" in line for line in lines)


def test_a_caption_longer_than_its_table_stays_one_line_off_a_terminal() -> None:
    """`recommend TASK | cat` split its footnote ("similar (meta-features): ... no spread when"
    / "one carries the weight) ...") over centred lines inside the table's width (5 at
    COLUMNS=60): off a terminal a caption is one line under the table, as a title is above."""
    caption = (
        "similar (meta-features): a, b, c; expected: similarity-weighted mean of their results "
        "(no spread when one carries the weight)"
    )
    for width in (200, 60):
        out = io.StringIO()
        console = MessageConsole(file=out, width=width, force_terminal=False)
        table = Table(title="recommendations", caption=caption)
        table.add_column("rank")
        table.add_column("strategy")
        table.add_row("1", "resnet18 fine-tune")
        console.print(table)
        lines = out.getvalue().splitlines()
        assert lines[-1] == caption, out.getvalue()
        assert any("resnet18 fine-tune" in line for line in lines[:-1])
        assert sum("similar" in line for line in lines) == 1


def test_a_running_run_shows_dash_for_its_missing_metrics(
    workspace: Workspace, reg: Registry, pomlia_at: Width
) -> None:
    """`runs list` left the val and test cells of a running run blank (`│ running │ │ │`);
    a missing value is `-` in every table (docs/guide/README.md)."""
    with reg.session() as s:
        s.add(Run(study="live", config={"arch": "cnn"}, budget=1, metrics={}, status="running"))
    wide = pomlia_at(workspace.home, "runs", "list", columns="250")
    row = next(line for line in wide.splitlines() if "running" in line)
    values = [c.strip() for c in row.split("│")[1:-1]]
    status = next(i for i, c in enumerate(values) if c.startswith("running"))
    assert values[status + 1 : status + 3] == ["-", "-"], wide
    narrow = pomlia_at(workspace.home, "runs", "list", columns="80")
    row = next(line for line in narrow.splitlines() if "running" in line)
    values = [c.strip() for c in row.split("│")[1:-1]]
    assert values[values.index("running") + 1] == "-", narrow  # the metrics cell


def test_deploy_history_s_gate_decisions_fit_80_columns(
    workspace: Workspace, reg: Registry, pomlia_at: Width
) -> None:
    """`deploy history`'s gate table printed 115 columns at COLUMNS=80 once it named the
    gate's test, and cut the challenger's name: it has a narrow form (models, decision with
    test and p, accuracies stacked) that keeps the names whole."""
    when = datetime(2026, 12, 5, 4, 31, 7, tzinfo=UTC)
    names = ("demo-20261205-110832-best", "demo-20261205-110832-best-loop1-best")
    with reg.session() as s:
        models = [Model(name=n, run_id=None, path="/x", created_at=when) for n in names]
        s.add_all(models)
        s.flush()
        gate = GateDecision(
            slot="ward",
            champion_id=models[0].id,
            challenger_id=models[1].id,
            passed=True,
            evidence={
                "challenger": names[1],
                "champion": names[0],
                "fixed_test": {"champion_accuracy": 0.992, "challenger_accuracy": 0.992, "n": 125},
                "production": {"champion_accuracy": 0.81, "challenger_accuracy": 0.993, "n": 142},
                "p_value": 1.08e-07,
                "test": "McNemar",
            },
            created_at=when,
        )
        s.add(gate)
        s.flush()
        for kind, model, gate_id in (
            ("initial", models[0], None),
            ("promoted", models[1], gate.id),
        ):
            s.add(
                Promotion(
                    slot="ward",
                    model_id=model.id,
                    bundle_path="/x",
                    kind=kind,
                    gate_id=gate_id,
                    created_at=when,
                )
            )
        s.commit()
    out = pomlia_at(workspace.home, "deploy", "history", "ward", columns="80")
    table = [line for line in out.splitlines() if line.strip()[:1] in set("┏┃┡│└")]
    assert max(len(line) for line in table) <= 80, out
    for token in (*names, "McNemar", "1.08e-07", "0.810 → 0.993 (n=142)", "passed"):
        assert token in cells(out), (token, out)
