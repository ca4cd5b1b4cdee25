"""The ``pomlia`` command's exit statuses as scripts and Slurm jobs read them (the table in
``docs/guide/README.md``, "Exit status"): 1 is only ever a finding (`monitor run`'s alarm,
`data verify`'s damage), never a crash; a thing not found is 4, apart from bad input (2); a
database server out of reach is 69, a bug 70.

Every test function runs ``pomlia`` at least once in a process of its own (``pomlia``),
whose exit status a script reads; the further cases of a test (a second command, the other
parameters, some cases of a parametrized test) run through the console script's entry point
in this process (``pomlia_here``), where the status is decided (``main``'s ``SystemExit``): a
process start costs seconds of CPU."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from pomlia_hpc.errors import INTERNAL_EXIT, NOT_FOUND_EXIT, UNAVAILABLE_EXIT
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_completed

REPO = Path(__file__).resolve().parents[1]


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in its own process, with this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("POMLIA_DB_URL", "COLUMNS")}
    return subprocess.run(
        [sys.executable, *args],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def pomlia(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "pomlia_hpc", *args)


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def pomlia_here(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """``pomlia ARGS`` through the console script's entry point in this process, as
    ``pomlia`` would give it: its exit status, stdout and stderr."""
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return pomlia_completed(monkeypatch, capsys, *args)

    return run


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound once, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_registry_failure_is_not_exit_1(workspace: Workspace) -> None:
    """A registry database error ("no such table" in a damaged registry) was exit 1, the
    status `monitor run` answers with for an alarm: `jobs/monitor.sbatch` counted the failed
    run as an alarm and ended the job COMPLETED. It is one line and exit 70 now."""
    with sqlite3.connect(workspace.home / "registry.db") as conn:
        conn.execute("DROP TABLE jobs")
    proc = pomlia("--home", str(workspace.home), "jobs", "list", "--json")
    assert proc.returncode == INTERNAL_EXIT, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip() == "error: registry database error: no such table: jobs"


def test_a_workspace_that_is_a_file_is_bad_input_not_a_missing_registry(
    tmp_path: Path, pomlia_here: Run
) -> None:
    """``--home`` naming a file said "no registry at <file>/registry.db" (exit 4) and sent the
    user to `pomlia init`, which cannot make a folder there: it is bad input (2), one line
    that says the path is a file, also for `pomlia init` itself."""
    afile = tmp_path / "notes.txt"
    afile.write_text("not a workspace")
    for run, args in ((pomlia, ("data", "list")), (pomlia_here, ("init",))):
        proc = run("--home", str(afile), *args)
        assert proc.returncode == 2, proc.stderr
        assert f"workspace {afile} is a file, not a folder" in proc.stderr
        assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert afile.read_text() == "not a workspace"


def test_a_bad_count_for_similar_is_bad_input_before_any_lookup(
    workspace: Workspace, pomlia_here: Run
) -> None:
    """`similar X --k 0` in a workspace without an encoder was exit 4 ("no encoder is
    registered"): the bad option is found first, exit 2, whatever the workspace holds."""
    for run, option, what in ((pomlia, "--k", "datasets"), (pomlia_here, "--images", "images")):
        proc = run("--home", str(workspace.home), "similar", "anything", option, "0")
        assert proc.returncode == 2, proc.stderr
        assert f"{option} 0: expected a number of {what} >= 1" in proc.stderr


def test_a_database_server_out_of_reach_is_exit_69(tmp_path: Path) -> None:
    """A PostgreSQL registry that refuses connections was exit 2, as a mistyped option is:
    a script could not tell "try again later" from "fix the command"."""
    url = f"postgresql+psycopg://pomlia:pomlia@127.0.0.1:{free_port()}/pomlia"
    proc = pomlia("--home", str(tmp_path / "ws"), "--db-url", url, "data", "list", "--json")
    assert proc.returncode == UNAVAILABLE_EXIT, proc.stderr
    err = proc.stderr.strip()
    assert proc.stdout == "" and "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: registry postgresql+psycopg://pomlia:***@127.0.0.1:"), err
    assert "the database server did not answer" in err and "Connection refused" in err, err


def test_a_database_host_that_does_not_exist_is_bad_input(tmp_path: Path) -> None:
    """A registry URL whose host name no DNS server knows (a typo) was exit 69, "the server
    did not answer: the same command works once it is": a nightly script retried it for
    ever. A name server that does not answer (EAI_AGAIN) is still 69."""
    url = "postgresql+psycopg://pomlia:pomlia@no-such-host.invalid:5432/pomlia"
    proc = pomlia("--home", str(tmp_path / "ws"), "--db-url", url, "data", "list", "--json")
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error: registry postgresql+psycopg://pomlia:***@no-such-host."), err
    assert "failed to resolve host 'no-such-host.invalid'" in err and "\n" not in err, err


@pytest.mark.postgres
def test_a_server_that_refuses_the_password_is_still_bad_input(pg_url: str, tmp_path: Path) -> None:
    """A server that answered (wrong password) is the user's to fix: exit 2, as before."""
    wrong = make_url(pg_url).set(password="not-the-password").render_as_string(False)
    proc = pomlia("--home", str(tmp_path / "ws"), "--db-url", wrong, "data", "list", "--json")
    assert proc.returncode == 2, proc.stderr
    assert "password authentication failed" in proc.stderr and proc.stdout == ""


@pytest.mark.postgres
def test_a_database_the_server_does_not_have_is_no_registry(
    pg_url: str, tmp_path: Path, pomlia_here: Run
) -> None:
    """A PostgreSQL URL naming a database that does not exist was exit 2 ("expected a
    reachable server ... and correct credentials"), where a workspace without its SQLite file
    is 4: a script's `|| pomlia init` never ran for it. `init` cannot create the database
    itself: its answer says how, and leaves no workspace folder."""
    url = make_url(pg_url).set(database="pomlia_no_such_db").render_as_string(False)
    for run, args in ((pomlia, ("data", "list", "--json")), (pomlia_here, ("init",))):
        proc = run("--home", str(tmp_path / "ws"), "--db-url", url, *args)
        assert proc.returncode == NOT_FOUND_EXIT, proc.stderr
        error, hint = proc.stderr.strip().splitlines()
        assert error.startswith("error: no registry at postgresql+psycopg://"), error
        assert error.endswith("the server has no database 'pomlia_no_such_db' (workspace "
                              f"{tmp_path / 'ws'})"), error  # fmt: skip
        assert hint.startswith("  hint: create it (`createdb -h "), hint
        assert hint.endswith("then run `pomlia init`; or correct the database name in the URL")
        assert proc.stdout == "" and not (tmp_path / "ws").exists()


def test_a_bug_is_its_traceback_and_exit_70() -> None:
    """An exception no command handles (a bug) ended with Python's exit status 1, the status
    of an alarm: its traceback stays, then one line, and the status is its own."""
    code = (
        "from pomlia_hpc.cli import app, main\n"
        "@app.command('boom')\n"
        "def boom() -> None:\n"
        "    {}['key']\n"
        "main()\n"
    )
    proc = run_python("-c", code, "boom")
    assert proc.returncode == INTERNAL_EXIT, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):", proc.stderr
    assert lines[-2] == "KeyError: 'key'", proc.stderr
    assert lines[-1] == "error: internal error (a bug in pomlia; traceback above): KeyError: 'key'"


def test_not_found_is_exit_4_apart_from_bad_input(workspace: Workspace, pomlia_here: Run) -> None:
    """A name or id not in the registry was exit 2, as a malformed one is: `pomlia data show
    X --json || pomlia data add X ...` could not tell "not there" from any other error."""
    home = ("--home", str(workspace.home))
    for run, args in (
        (pomlia, ("data", "show", "nosuch", "--json")),
        (pomlia_here, ("jobs", "show", "999", "--json")),
    ):
        proc = run(*home, *args)
        assert proc.returncode == NOT_FOUND_EXIT, proc.stderr
        assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    bad = pomlia_here(*home, "jobs", "show", "abc", "--json")
    assert bad.returncode == 2 and bad.stdout == "", bad.stderr
    assert bad.stderr.startswith("error: job 'abc': expected a registry job id"), bad.stderr


def test_a_file_the_command_was_pointed_at_that_is_not_there_is_exit_4(
    workspace: Workspace, tmp_path: Path, pomlia_here: Run
) -> None:
    """The table says so, but `data add NAME missing.npz` and `pipeline run missing.yaml`
    were exit 2, as a malformed file is."""
    home = ("--home", str(workspace.home))
    gone = tmp_path / "gone"
    for run, args in (
        (pomlia, ("data", "add", "x", f"{gone}.npz")),
        (pomlia_here, ("pipeline", "run", f"{gone}.yaml")),
    ):
        proc = run(*home, *args)
        assert proc.returncode == NOT_FOUND_EXIT, proc.stderr
        assert proc.stderr.startswith("error: ") and "does not exist" in proc.stderr


@contextlib.contextmanager
def postgres_saying(message: str, code: str) -> Iterator[int]:
    """A server on 127.0.0.1 that answers every PostgreSQL connection, as a real server does
    while it starts up, shuts down or has no connection slot left: SSL and GSS encryption
    declined, then the startup message answered with ``FATAL`` ``message`` (SQLSTATE
    ``code``). Yields its port."""
    error = b"".join(
        key + value.encode() + b"\0"
        for key, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))
    )
    reply = b"E" + struct.pack("!i", 4 + len(error) + 1) + error + b"\0"
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    done = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            while True:
                head = conn.recv(8, socket.MSG_WAITALL)
                if len(head) < 8:
                    return
                size, request = struct.unpack("!ii", head)
                conn.recv(size - 8, socket.MSG_WAITALL)
                if request in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                    conn.sendall(b"N")
                    continue
                conn.sendall(reply)
                return

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        done.set()
        thread.join()
        srv.close()


@pytest.mark.parametrize(
    ("message", "code", "own_process"),
    [
        ("the database system is starting up", "57P03", True),
        ("the database system is shutting down", "57P03", False),
        ("sorry, too many clients already", "53300", False),
    ],
)
def test_a_database_server_that_cannot_take_a_connection_now_is_exit_69(
    tmp_path: Path, message: str, code: str, own_process: bool, pomlia_here: Run
) -> None:
    """A server restarting (a nightly maintenance window) or out of connection slots answers
    with a FATAL error: that was read as a refusal of the user's settings, exit 2, so a
    nightly job's script could not tell it from a wrong password and retry."""
    run = pomlia if own_process else pomlia_here
    with postgres_saying(message, code) as port:
        url = f"postgresql+psycopg://pomlia:pomlia@127.0.0.1:{port}/pomlia"
        proc = run("--home", str(tmp_path / "ws"), "--db-url", url, "data", "list", "--json")
    assert proc.returncode == UNAVAILABLE_EXIT, proc.stderr
    assert message in proc.stderr and proc.stdout == "", proc.stderr


@pytest.mark.postgres
def test_a_url_that_names_no_database_is_told_which_one_the_server_lacks(
    pg_url: str, tmp_path: Path
) -> None:
    """Without a database in the URL libpq connects to the one named as the user: the error
    said "the server has no database ''" and its hint `createdb -h ... -U pomlia ` (no name)."""
    import psycopg

    user = make_url(pg_url).username
    url = make_url(pg_url).set(database="").render_as_string(False).split("?")[0]
    dsn = make_url(pg_url).render_as_string(False).replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn.split("?")[0]) as conn:  # the test needs no database so named
        named = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (user,)).fetchone()
    if named is not None:
        pytest.skip(f"the test server has a database named as its user ({user})")
    proc = pomlia("--home", str(tmp_path / "ws"), "--db-url", url, "data", "list")
    assert proc.returncode == NOT_FOUND_EXIT, proc.stderr
    error, hint = proc.stderr.strip().splitlines()
    assert f"the server has no database '{user}' (the URL names no database: libpq took" in error
    assert hint.startswith("  hint: create it (`createdb -h ") and f" {user}`, or ask" in hint


@pytest.mark.parametrize(
    ("args", "noun", "own_process"),
    [
        (("jobs", "show", "99999999999999999999"), "job", True),
        (("jobs", "cancel", "99999999999999999999"), "job", False),
        (("monitor", "show", "99999999999999999999"), "report", False),
        (("loop", "dismiss", "99999999999999999999", "--reason", "x"), "retrain request", False),
    ],
)
def test_an_id_no_row_can_have_is_not_found_not_a_bug(
    workspace: Workspace, args: tuple[str, ...], noun: str, own_process: bool, pomlia_here: Run
) -> None:
    """An id with more digits than the registry's integers hold (SQLite cannot even take it
    as a parameter) ended in an OverflowError traceback, exit 70: it is not found, as any
    other unknown id."""
    proc = (pomlia if own_process else pomlia_here)("--home", str(workspace.home), *args)
    assert proc.returncode == NOT_FOUND_EXIT, proc.stderr
    assert proc.stderr.startswith(f"error: {noun} 99999999999999999999 is not in the registry")
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
