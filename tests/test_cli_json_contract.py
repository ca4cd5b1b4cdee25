"""The machine-readable contract of ``--json`` as scripts see it, the real ``pomlia`` in its
own process: stdout is one strict JSON document and nothing else, the same bytes whatever the
terminal settings (``FORCE_COLOR``, ``NO_COLOR``, ``TERM=dumb``, ``COLUMNS``); an error leaves
stdout empty. What a document holds, and a refusal's empty stdout after a first document in a
process of its own, are checked in this process (``pomlia_here``: the console script's entry
point, stdout apart from stderr as in a process): a process start costs seconds of CPU."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.cli.jsonout import dumps
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_completed
from tests.fixtures.factories import make_dataset

REPO = Path(__file__).resolve().parents[1]

#: Terminal settings a script's environment may carry; none may change a --json document.
TERMINALS = (
    {},
    {"FORCE_COLOR": "1", "COLUMNS": "20", "TERM": "xterm-256color"},
    {"NO_COLOR": "1", "TERM": "dumb"},
)


def pomlia(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``pomlia --home HOME ARGS`` in its own process (stdout a pipe), ``env`` added to a
    clean environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("POMLIA_DB_URL", "COLUMNS")}
    base = {k: v for k, v in base.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TERM")}
    return subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "--home", str(home), *args],
        env={**base, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def pomlia_here(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """``pomlia --home HOME ARGS`` in this process, through the console script's entry point:
    its exit status, stdout and stderr, as ``pomlia`` gives them."""
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)

    def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return pomlia_completed(monkeypatch, capsys, "--home", str(home), *args)

    return run


def test_data_show_json_is_plain_json_whatever_the_terminal(
    workspace: Workspace, reg: Registry
) -> None:
    """`data show --json` printed through rich's JSON printer: with FORCE_COLOR=1 (set by
    many CI systems) its stdout, a pipe or a file, held colour escape codes, not JSON."""
    make_dataset(workspace, reg, "blood", sizes=(8, 4, 4))
    for command in (["data", "show", "blood"], ["data", "list"]):
        outputs = set()
        for env in TERMINALS:
            proc = pomlia(workspace.home, *command, "--json", **env)
            assert proc.returncode == 0, (env, proc.stderr)
            assert "\x1b" not in proc.stdout, env
            json.loads(proc.stdout)
            outputs.add(proc.stdout)
        assert len(outputs) == 1, command  # byte for byte the same


def test_data_show_json_with_a_grid_keeps_stdout_one_document(
    workspace: Workspace, reg: Registry, tmp_path: Path, pomlia_here: Run
) -> None:
    """`data show --json --grid g.png` printed `sample grid: ...` on stdout after the JSON,
    and a bad --classes failed (exit 2) after the JSON was printed."""
    make_dataset(workspace, reg, "blood", sizes=(8, 4, 4))
    png = tmp_path / "g.png"
    proc = pomlia(workspace.home, "data", "show", "blood", "--json", "--grid", str(png))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ref"].startswith("blood@")
    assert "sample grid:" in proc.stderr and png.is_file()
    bad = pomlia_here(
        workspace.home, "data", "show", "blood", "--json", "--grid", str(tmp_path / "h.png"),
        "--classes", "nosuch",
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == "", bad.stdout
    assert bad.stderr.startswith("error: class 'nosuch'") and "\n" not in bad.stderr.strip()


def test_the_json_printer_writes_strict_json() -> None:
    """Python's json writes NaN and Infinity as bare words that jq and other parsers refuse:
    every --json document has null there, and times carry their zone."""
    from datetime import datetime

    import numpy as np

    text = dumps(
        {
            "nan": math.nan,
            "inf": np.float32("inf"),
            "rows": [np.float64("nan"), 1.5, (2, 3)],
            "naive": datetime(2026, 12, 6, 1, 2, 3),
            "path": REPO,
        }
    )
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data == {
        "nan": None,
        "inf": None,
        "rows": [None, 1.5, [2, 3]],
        "naive": "2026-12-06T01:02:03+00:00",
        "path": str(REPO),
    }


def test_jobs_show_json_is_one_object(
    workspace: Workspace, reg: Registry, pomlia_here: Run
) -> None:
    """`jobs show ID --json` printed a list of one object, where every other `show` prints
    the object (`data show`, `monitor show`)."""
    from pomlia_hpc.cluster.records import record_submission

    (job,) = record_submission(reg, backend="local", scheduler_ids=["77"], name="j", folder="/x")
    proc = pomlia_here(workspace.home, "jobs", "show", str(job), "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert isinstance(shown, dict) and shown["id"] == job and shown["logs"] == []


def test_deploy_history_json_is_one_object_of_values(
    workspace: Workspace, reg: Registry, pomlia_here: Run
) -> None:
    """`deploy history` had no --json: a script read the slot's promotions and gates from a
    table (accuracies rounded, `0.810 → 0.993 (n=142)` in one cell)."""
    from datetime import UTC, datetime

    from pomlia_hpc.registry import GateDecision, Model, Promotion

    when = datetime(2026, 12, 5, 4, 31, 7, tzinfo=UTC)
    production = {"champion_accuracy": 0.81, "challenger_accuracy": 0.993, "n": 142}
    with reg.session() as s:
        models = [Model(name=n, run_id=None, path="/x", created_at=when) for n in ("a", "b")]
        s.add_all(models)
        s.flush()
        gate = GateDecision(
            slot="ward", champion_id=models[0].id, challenger_id=models[1].id, passed=True,
            evidence={"production": production, "p_value": 1.08e-07}, created_at=when,
        )  # fmt: skip
        s.add(gate)
        s.flush()
        for kind, model, gate_id in (("initial", models[0], None), ("promoted", models[1], 1)):
            s.add(
                Promotion(
                    slot="ward", model_id=model.id, bundle_path="/x", kind=kind,
                    gate_id=gate_id, created_at=when,
                )
            )  # fmt: skip
        s.commit()
    proc = pomlia_here(workspace.home, "deploy", "history", "ward", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["slot"] == "ward" and [p["model"] for p in shown["promotions"]] == ["a", "b"]
    assert shown["promotions"][1]["gate_id"] == 1
    assert shown["promotions"][0]["created_at"] == "2026-12-05T04:31:07+00:00"
    (decided,) = shown["gates"]
    assert (decided["challenger"], decided["champion"], decided["passed"]) == ("b", "a", True)
    assert decided["production"] == production and decided["p_value"] == 1.08e-07
    assert decided["test"] == "McNemar" and decided["fixed_test"] is None
    missing = pomlia_here(workspace.home, "deploy", "history", "nosuch", "--json")
    assert missing.returncode == 4 and missing.stdout == "", missing.stderr
    # The guide's row names every key, and a bootstrap gate's figures (it named only the
    # accuracies and left out `metric` and `trained_on`).
    text = (REPO / "docs" / "guide" / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `deploy history` |"))
    keys = {*shown, *shown["promotions"][0], *decided, "champion_value", "challenger_value"}
    assert not [k for k in sorted(keys) if not re.search(rf"\b{k}\b", row)], row


def json_commands() -> set[str]:
    """Every ``pomlia`` command that takes ``--json``, as ``group command`` words."""
    import typer

    from pomlia_hpc.cli import app

    found: set[str] = set()

    def walk(command: Any, words: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*words, name])
        if any("--json" in getattr(p, "opts", ()) for p in command.params):
            found.add(" ".join(words))

    walk(typer.main.get_command(app), [])
    return found


def test_every_json_command_is_in_the_scripting_table() -> None:
    """`deploy history` got --json and `jobs show` changed its shape: the guide's list of
    --json commands and the table of their documents are the one reference a script has, so
    a command missing from either is a failure here."""
    text = (REPO / "docs" / "guide" / "README.md").read_text()
    section = text[text.index("## Scripting: JSON and exit status") :]
    listed = " ".join(section[: section.index("- stdout holds")].split())
    documented = set(re.findall(r"^\| `pomlia ([a-z ]+?)(?: [A-Z]+)? --json` \|", text, re.M))
    for row in re.findall(r"^\| (`[a-z ]+`(?:, `[a-z ]+`)*) \|", section, re.M):
        documented |= set(re.findall(r"`([a-z ]+)`", row))
    for command in json_commands():
        assert f"`{command}`" in listed, f"{command}: not in the list of --json commands"
        assert command in documented, f"{command}: no row of keys in docs/guide/README.md"
