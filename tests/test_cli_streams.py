"""The ``pomlia`` command's output streams as scripts and schedulers see them: any stdout
encoding, a full disk or a closed stream, and `data add`'s result apart from its progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main
from tests.fixtures.factories import tiny_npz

REPO = Path(__file__).resolve().parents[1]


def pomlia(
    home: Path, *args: str, shell_tail: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    """``pomlia --home HOME ARGS`` in its own process, through bash with ``shell_tail``
    appended (redirections such as ``> /dev/full``), with ``env`` added to the environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("POMLIA_DB_URL", "COLUMNS")}
    command = " ".join(
        f"'{a}'" for a in [sys.executable, "-m", "pomlia_hpc", "--home", str(home), *args]
    )
    return subprocess.run(
        ["bash", "-c", f"{command} {shell_tail}"],
        env={**base, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        encoding=env.get("PYTHONIOENCODING", "utf-8"),  # as the command writes
        check=False,
    )


def test_output_survives_an_ascii_stdout(workspace: Workspace, tmp_path: Path) -> None:
    """With PYTHONIOENCODING=ascii (or LC_ALL=C) and non-ASCII class names or paths, `data add`
    printed the new version, then a UnicodeEncodeError traceback and exit 1 after registering
    it; `data show` (table and --json) crashed. Unencodable characters are escaped now, JSON
    is ASCII, and the exit status is 0. Every command runs with an ASCII stdout, where no
    non-ASCII character can be written; the table, whose class names are partly encodable in
    latin-1 (ä, í, not €), also with a latin-1 one (JSON is ASCII whatever the encoding)."""
    folder = tmp_path / "dätä"
    folder.mkdir()
    npz = tiny_npz(folder / "pneumo.npz", "pneumoniamnist", sizes=(20, 4, 4))
    ascii_out = {"PYTHONIOENCODING": "ascii"}
    add = pomlia(workspace.home, "data", "add", "pneumo", str(npz), "--class-names",
                 "normäl,pneumonía€", **ascii_out)  # fmt: skip
    assert add.returncode == 0 and "Traceback" not in add.stderr, add.stderr
    assert "pneumo@" in add.stdout and "splits: train 20, val 4, test 4" in add.stdout
    for env in (ascii_out, {"PYTHONIOENCODING": "latin-1"}):
        show = pomlia(workspace.home, "data", "show", "pneumo", **env)
        assert show.returncode == 0 and "Traceback" not in show.stderr, show.stderr
        assert "norm" in show.stdout and "pneumon" in show.stdout
    as_json = pomlia(workspace.home, "data", "show", "pneumo", "--json", **ascii_out)
    assert as_json.returncode == 0, as_json.stderr
    meta = json.loads(as_json.stdout)["meta"]
    assert meta["class_names"] == ["normäl", "pneumonía€"]


def test_a_failed_or_closed_stdout_is_one_line_and_exit_74(workspace: Workspace) -> None:
    """`data list --json > /dev/full` gave an OSError traceback (exit 1), a closed stdout
    "AttributeError: 'NoneType' object has no attribute 'flush'" (exit 120). One line on stderr
    and exit 74 now; a closed stderr is no error."""
    full = pomlia(workspace.home, "data", "list", "--json", shell_tail="> /dev/full")
    assert full.returncode == 74, full.stderr
    assert full.stderr.strip() == "error: cannot write output: No space left on device"
    closed = pomlia(workspace.home, "data", "list", shell_tail=">&-")
    assert closed.returncode == 74, closed.stderr
    assert closed.stderr.strip() == "error: cannot write output: standard output is closed"
    both = pomlia(workspace.home, "data", "list", shell_tail=">&- 2>&-")
    assert both.returncode == 74
    no_stderr = pomlia(workspace.home, "data", "list", "--json", shell_tail="2>&-")
    assert no_stderr.returncode == 0 and json.loads(no_stderr.stdout) == []


def test_data_add_prints_its_result_on_stdout_and_the_rest_on_stderr(
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`data add` wrote its progress lines and warnings to stdout, so `V=$(pomlia data add
    ...)` captured them all. They go to stderr now; `--json` prints the version's record.
    The `data add` runs are processes of their own; `data list`, only read for a key, runs
    in this one."""
    npz = tiny_npz(tmp_path / "blood.npz", sizes=(20, 0, 0))  # no val/test: a warning
    res = pomlia(workspace.home, "data", "add", "blood", str(npz), "--json")
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["ref"] == f"blood@{record['version']}" and record["created"] is True
    assert record["n_images"] == 20 and record["splits"] == {"train": 20, "val": 0, "test": 0}
    # the key `data list --json` and `data show --json` give the path under (`store` stays)
    code, out, _ = pomlia_main(monkeypatch, capsys, "--home", str(workspace.home), "data", "list",
                               "--json")  # fmt: skip
    assert code == 0
    listed = json.loads(out)
    assert record["store_path"] == record["store"] == listed[0]["store_path"]
    assert "ingest: 20/20 images" in res.stderr and "warning: no val or test images" in res.stderr
    again = pomlia(workspace.home, "data", "add", "blood", str(npz))
    assert again.returncode == 0, again.stderr
    assert [line.split(":")[0] for line in again.stdout.splitlines()] == [
        "identical content",
        "store",
        "splits",
        "store checked",
    ]
    assert "warning: no val or test images" in again.stderr
