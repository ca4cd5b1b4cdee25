"""The ``pomlia`` command: help everywhere, version, init/status, jobs list/show/cancel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc import __version__
from pomlia_hpc.cli import app
from pomlia_hpc.cluster import Executor, JobFailedError
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.registry.db import head_revision
from pomlia_hpc.workspace import Workspace
from tests.fixtures import jobfns
from tests.fixtures.cli import cli_ok, command_at, command_paths, help_page

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_console")


def test_every_command_has_help() -> None:
    paths = command_paths()
    assert ("jobs", "cancel") in paths and ("status",) in paths
    for path in paths:
        help_page(path)  # renders, exit 0
        cmd = command_at(path)
        where = f"`pomlia {' '.join(path)}`"
        assert (cmd.help or "").strip(), f"{where} has no help text"
        # The command lists show the short help as it is: a line break there splits a sentence.
        if path:
            summary = cmd.short_help or (cmd.help or "").split("\n\n")[0]
            assert "\n" not in summary.strip(), f"{where}: summary spans lines"
        # Rich markup mode takes "[default: 5]" in a help text for a style tag and drops it.
        for text in [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]:
            assert not re.search(r"\[[a-z][^\]]*\]", text), f"{where}: markup-like {text!r}"


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_init_and_status(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    res = runner.invoke(app, ["--home", str(home), "init"])
    assert res.exit_code == 0, res.output
    assert Workspace(home, "", "local").exists
    assert (home / "registry.db").is_file()
    res = runner.invoke(app, ["--home", str(home), "status"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    # The workspace just made, the registry in it at this pomlia's schema, the local backend;
    # no jobs yet.
    assert lines[:4] == [
        f"workspace : {home}",
        f"registry  : sqlite:///{home / 'registry.db'}",
        f"schema    : revision {head_revision()}",
        "cluster   : profile 'local' (backend local)",
    ], res.output
    assert "recent jobs (0)" in res.output


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "pomlia.yaml").write_text("clusterr: {}\n")
    env = {**os.environ, "POMLIA_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "status"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown key 'clusterr'" in proc.stderr and "Traceback" not in proc.stderr


def test_an_error_quoting_brackets_is_printed_as_text(tmp_path: Path) -> None:
    """Errors were printed as rich markup: "[val]" in a message (a split, a user's name)
    vanished. The workspace is made in this process; the error printed by a process of its own."""
    env = {**os.environ, "POMLIA_HOME": str(tmp_path / "h"), "COLUMNS": "1000"}
    env.pop("POMLIA_DB_URL", None)
    cmd = [sys.executable, "-m", "pomlia_hpc"]
    cli_ok("--home", env["POMLIA_HOME"], "init", env={"POMLIA_DB_URL": None})
    proc = subprocess.run(
        [*cmd, "recommend", "[val]nosuch"], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 4 and "task '[val]nosuch' not found" in proc.stderr, proc.stderr


def test_a_home_that_is_a_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """`pomlia --home FILE init` (and every command that creates the layout) failed in mkdir
    with a traceback; it is refused before anything is made, naming the file."""
    home = tmp_path / "notes.txt"
    home.write_text("mine")
    proc = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "--home", str(home), "init"],
        env={**os.environ, "COLUMNS": "1000"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"workspace {home} is a file, not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert home.read_text() == "mine"


def test_a_refused_init_leaves_no_workspace_skeleton(tmp_path: Path) -> None:
    """`pomlia --home h2 --db-url garbage init` exited 2 but left h2/ with stores/, jobs/, ..."""
    home = tmp_path / "new" / "h2"
    res = runner.invoke(app, ["--home", str(home), "--db-url", "garbage", "init"])
    assert "'garbage' is not a valid database URL" in str(res.exception)
    assert not (tmp_path / "new").exists()
    # A home that existed keeps what it had; only the folders the command made go.
    old = tmp_path / "old"
    (old / "stores" / "mine").mkdir(parents=True)
    res = runner.invoke(app, ["--home", str(old), "--db-url", "garbage", "init"])
    assert res.exit_code != 0
    assert [p.name for p in old.iterdir()] == ["stores"] and (old / "stores" / "mine").is_dir()
    # So do the other commands that lay out the workspace, e.g. without a registry there.
    res = runner.invoke(app, ["--home", str(tmp_path / "none"), "automl", "run", "t"])
    assert isinstance(res.exception, NotFoundError) and "run `pomlia init`" in str(res.exception)
    assert not (tmp_path / "none").exists()


def test_jobs_list_takes_a_recorded_state_beyond_the_vocabulary(workspace: Workspace) -> None:
    """Slurm states outside JobState (SUSPENDED, REQUEUED, ...) are recorded as Slurm says
    them: `--state suspended` lists such jobs instead of refusing the state."""
    reg = Registry.open(workspace.db_url)
    with reg.session() as s:
        s.add(Job(backend="other", scheduler_id="7", name="paused", state="SUSPENDED"))
    res = runner.invoke(app, ["jobs", "list", "--state", "suspended"], catch_exceptions=False)
    assert res.exit_code == 0 and "paused" in res.output, res.output
    with pytest.raises(InputError, match=r"expected one of PENDING, .*, UNKNOWN, SUSPENDED$"):
        runner.invoke(app, ["jobs", "list", "--state", "suspend"], catch_exceptions=False)
    reg.dispose()


def test_jobs_list_show_cancel(workspace: Workspace) -> None:
    reg = Registry.open(workspace.db_url)
    ex = Executor.from_profile("local", workspace.jobs, reg)
    done = ex.submit(jobfns.boom, "no such channel", name="failing")
    with pytest.raises(JobFailedError):
        done.result()
    slow = ex.submit(jobfns.sleep_for, 120, name="sleeper")

    res = runner.invoke(app, ["jobs", "list"])
    assert res.exit_code == 0, res.output
    assert "sleeper" in res.output and "FAILED" in res.output
    (sleeper_line,) = [ln for ln in res.output.splitlines() if "sleeper" in ln]
    assert "RUNNING" in sleeper_line  # the local process is looked at, not only result()

    res = runner.invoke(app, ["jobs", "show", str(done.record_id)])
    assert res.exit_code == 0
    assert "ValueError: no such channel" in res.output

    res = runner.invoke(app, ["jobs", "cancel", str(slow.record_id)])
    assert res.exit_code == 0, res.output
    deadline = time.time() + 30
    while not slow.done() and time.time() < deadline:
        time.sleep(0.2)
    assert slow.done()  # the process really stopped
    res = runner.invoke(app, ["jobs", "list", "--state", "cancelled"])
    assert "sleeper" in res.output
    # A mistyped state or a limit below 1 is one error, not an empty (or unlimited) list.
    for bad, says in (
        (["--state", "canceled"], "not a job state"),
        (["--limit", "-1"], "from 1 to"),
    ):
        with pytest.raises(InputError, match=says):
            runner.invoke(app, ["jobs", "list", *bad], catch_exceptions=False)
    with reg.session() as sess:
        row = sess.get(Job, slow.record_id)
        assert row is not None and row.ended_at is not None

    # An ended job keeps its state: nothing is signalled, nothing recorded.
    res = runner.invoke(app, ["jobs", "cancel", str(done.record_id)])
    assert res.exit_code == 0 and "already ended (FAILED)" in res.output

    res = runner.invoke(app, ["jobs", "show", "999"])
    assert isinstance(res.exception, NotFoundError), res.output
    assert str(res.exception) == "job 999 is not in the registry (see `pomlia jobs list`)"


def test_output_to_a_file_is_not_folded_at_80_columns(tmp_path: Path) -> None:
    """Off a terminal (a Slurm output file, a pipe) rich folded every table row and message at
    80 columns, so `grep` on a log found half a row; COLUMNS still sets the width, and an error
    is one line whatever the width."""
    home = tmp_path / ("w" * 150)
    # what would make rich take the file for a terminal, or point elsewhere, is left out
    unset = ("COLUMNS", "POMLIA_DB_URL", "POMLIA_CLUSTER", "FORCE_COLOR", "TTY_COMPATIBLE")
    env = {k: v for k, v in os.environ.items() if k not in unset}

    def run(*args: str, columns: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"COLUMNS": columns} if columns else {}
        return subprocess.run(
            [sys.executable, "-m", "pomlia_hpc", "--home", str(home), *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=False,
        )

    missing = run("status")  # no registry yet: an error longer than any width
    assert missing.returncode == 4 and len(missing.stderr.strip().splitlines()) == 1
    # made in this process (what is printed is checked in processes of their own)
    cli_ok("--home", str(home), "init", env={"POMLIA_DB_URL": None, "POMLIA_CLUSTER": None})

    def header(out: str) -> bool:  # the jobs table's header on one line
        return any("scheduler id" in line and "exit cause" in line for line in out.splitlines())

    assert header(run("status").stdout)
    narrow = run("status", columns="60").stdout  # COLUMNS sets the width: the narrow table
    table = [line for line in narrow.splitlines() if line[:1] in set("┏┃┡│└")]
    assert table and max(len(line) for line in table) <= 60, narrow


def test_a_value_that_is_not_a_number_is_one_line_naming_it(workspace: Workspace) -> None:
    """`jobs cancel abc` and `monitor show pneumo` printed typer's boxed "Invalid value for
    'job_id': Input should be a valid integer, unable to parse string as an integer", and
    `jobs cancel -1` "No such option: -1". One line in the project's style now, exit 2."""
    cases = (
        (
            ["jobs", "cancel", "abc"],
            "error: job 'abc': expected a registry job id (a whole number; see `pomlia jobs list`)",
        ),
        (["jobs", "show", "1.5"], "error: job '1.5': expected a registry job id (a whole number;"),
        (
            ["monitor", "show", "pneumo"],
            "error: report 'pneumo': expected a registry report id (a whole number; see `pomlia "
            "monitor history MODEL`)",
        ),
        (
            ["jobs", "cancel", "-1"],
            "error: job '-1': expected a registry job id (a whole number >= 1; see `pomlia jobs "
            "list`)",
        ),
        (["monitor", "show", "-2"], "error: report '-2': expected a registry report id"),
        (
            ["model", "register", "m", "x.pt", "--task-id", "q"],
            "error: --task-id 'q': expected a registry task id (a whole number; see `pomlia task "
            "list`)",
        ),
        (["model", "list", "--limit", "x"], "error: --limit 'x': expected a whole number"),
        (["model", "export", "m", "--rtol", "x"], "error: --rtol 'x': expected a number"),
        (["deploy", "history", "-1"], "error: no such option: -1 (a value starting with '-'"),
        # Below typer's min=: its boxed "Input should be greater than or equal to 1" before.
        (
            ["fingerprint", "extract", "a", "-e", "e", "--shards", "0"],
            "error: --shards 0: expected a whole number >= 1",
        ),
        (["fingerprint", "extract", "a", "--gpus", "-1"], "error: --gpus -1: expected a whole"),
    )
    for args, expected in cases:
        res = CliRunner().invoke(app, args)
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and out.startswith(expected), (args, out)
        assert "Input should be" not in out and "╭" not in out and "Usage:" not in out
    # An id below 1 is not found (exit 4); the hint's command was quoted inside quotes:
    # "(see `what `pomlia deploy MODEL` printed`)"
    res = CliRunner().invoke(app, ["serve", "m", "--deployment-id", "-1"])
    assert str(res.exception) == (
        "deployment -1 is not in the registry (see the id `pomlia deploy MODEL` printed)"
    )
    # Other usage errors keep typer's message with the usage line.
    res = CliRunner().invoke(app, ["jobs", "list", "--bogus"])
    assert res.exit_code == 2 and "No such option: --bogus" in res.output


def test_a_message_off_a_terminal_is_never_wrapped(tmp_path: Path) -> None:
    """Messages and hints to a file or a pipe were hard-wrapped at 200 columns (or COLUMNS),
    breaking the `pomlia ...` command a hint suggests in two; tables keep the width."""
    home = tmp_path / ("w" * 230)  # `init` says the workspace's path: a 300-column line
    unset = ("COLUMNS", "POMLIA_DB_URL", "POMLIA_CLUSTER", "FORCE_COLOR", "TTY_COMPATIBLE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    for columns in (None, "60"):
        extra = {"COLUMNS": columns} if columns else {}
        res = subprocess.run(
            [sys.executable, "-m", "pomlia_hpc", "--home", str(home), "init"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        (line,) = res.stdout.strip().splitlines()
        assert line.startswith(f"workspace {home} ready; registry "), line


def test_jobs_show_says_dash_for_unset_fields_and_a_local_jobs_start(
    workspace: Workspace,
) -> None:
    """`jobs show` printed Python's None for unset fields, and a completed local job's
    started_at stayed None (its process starts at its submission)."""
    reg = Registry.open(workspace.db_url)
    ex = Executor.from_profile("local", workspace.jobs, reg)
    job = ex.submit(jobfns.sleep_for, 0, name="quick")
    job.result()
    res = runner.invoke(app, ["jobs", "show", str(job.record_id)])
    assert res.exit_code == 0, res.output
    fields = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in res.output.splitlines()
        if line.count("│") == 3
    }
    assert fields["state"] == "COMPLETED" and fields["array_job_id"] == "-", fields
    assert fields["exit_cause"] == "-" and "None" not in res.output, res.output
    with reg.session() as s:
        row = s.get(Job, job.record_id)
        assert row is not None and row.started_at is not None and row.ended_at is not None
        assert row.submitted_at <= row.started_at <= row.ended_at
    # As `jobs list` shows times (to the second): not `2026-12-05 07:24:46.164275+00:00`.
    for key in ("submitted_at", "started_at", "ended_at"):
        assert fields[key] == f"{getattr(row, key):%Y-%m-%d %H:%M:%S}", fields
    reg.dispose()
