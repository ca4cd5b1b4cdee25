"""A registry that is missing, empty or damaged is never silently replaced: every command but
`pomlia init` says where it looked (and how to get the datasets back), a damaged page is one
line, and `pomlia registry recover` re-registers the stores from their own metadata."""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.cli import main
from pomlia_hpc.cli.app import console, err_console
from pomlia_hpc.data.api import list_versions
from pomlia_hpc.registry import Registry, RegistryMissingError
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_dataset


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def pomlia(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """`pomlia --home HOME ARGS` through the console entry point, in-process (a process start
    costs seconds on a loaded machine): exit code, stdout and stderr."""
    err_console.width = console.width = 300

    def run(home: Path, *args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["pomlia", "--home", str(home), *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def one_error_line(proc: Result) -> str:
    err = proc.stderr.strip()
    assert proc.returncode != 0, proc.stdout
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) <= 2, err  # message (+ hint)
    return " ".join(err.split())


def test_commands_do_not_create_a_missing_registry(tmp_path: Path, pomlia: Any) -> None:
    home = tmp_path / "ws"
    for args in (("status",), ("data", "list"), ("jobs", "list")):
        err = one_error_line(pomlia(home, *args))
        assert f"no registry at sqlite:///{home / 'registry.db'}" in err
        assert "does not exist" in err and "run `pomlia init`" in err
    assert not (home / "registry.db").exists()
    assert pomlia(home, "init").returncode == 0 and (home / "registry.db").is_file()
    assert pomlia(home, "status").returncode == 0


def test_an_empty_registry_file_is_not_a_new_registry(tmp_path: Path, pomlia: Any) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    (home / "registry.db").write_bytes(b"")
    err = one_error_line(pomlia(home, "data", "list"))
    assert "the file" in err and "is empty" in err
    assert (home / "registry.db").stat().st_size == 0  # left as it was


def test_lost_registry_recovered_from_the_stores(
    workspace: Workspace, reg: Registry, pomlia: Any
) -> None:
    refs = [
        tiny_dataset(workspace, reg, "blood", sizes=(20, 4, 4)),
        tiny_dataset(workspace, reg, "blood", sizes=(24, 4, 4), seed=1),  # a second version
        tiny_dataset(workspace, reg, "organ", "organamnist", sizes=(20, 4, 4)),
    ]
    before = {(v.name, v.version, v.parent, v.n_images) for v in list_versions(reg)}
    reg.dispose()
    db = workspace.home / "registry.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    err = one_error_line(pomlia(workspace.home, "data", "list"))
    assert f"3 dataset store(s) exist under {workspace.stores}" in err
    assert "`pomlia registry recover`" in err
    out = pomlia(workspace.home, "registry", "recover")
    assert out.returncode == 0, out.stderr
    assert "3 dataset version(s) registered, 0 already known, 0 skipped" in out.stdout
    listing = pomlia(workspace.home, "data", "list")
    assert listing.returncode == 0 and all(r.split("@")[1] in listing.stdout for r in refs)
    again = Registry.open(workspace.db_url)
    after = {(v.name, v.version, v.parent, v.n_images) for v in list_versions(again)}
    again.dispose()
    assert after == before  # names, versions, lineage and sizes as they were
    twice = pomlia(workspace.home, "registry", "recover")
    assert "0 dataset version(s) registered, 3 already known" in twice.stdout


def test_a_damaged_registry_page_is_one_line(tmp_path: Path, pomlia: Any) -> None:
    home = tmp_path / "ws"
    assert pomlia(home, "init").returncode == 0
    db = home / "registry.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root, page = con.execute(
        "SELECT rootpage, (SELECT page_size FROM pragma_page_size) FROM sqlite_master "
        "WHERE name = 'jobs'"
    ).fetchone()
    con.close()
    data = bytearray(db.read_bytes())
    data[(root - 1) * page : root * page] = b"\xa5" * page  # the jobs table's root page
    db.write_bytes(bytes(data))
    for args in (("status",), ("jobs", "list")):
        err = one_error_line(pomlia(home, *args))
        assert "is damaged (database disk image is malformed)" in err
        assert "`pomlia registry recover`" in err


def test_the_library_can_still_create_and_refuses_when_told(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with pytest.raises(RegistryMissingError, match="does not exist"):
        Registry.open(url, create=False)
    assert not (tmp_path / "r.db").exists()
    Registry.open(url).dispose()  # the default (tests, jobs, the demo) creates it
    Registry.open(url, create=False).dispose()


@pytest.mark.postgres
def test_an_empty_postgres_database_is_not_a_registry(pg_url: str) -> None:
    with pytest.raises(RegistryMissingError, match="holds no registry schema"):
        Registry.open(pg_url, create=False)
    Registry.open(pg_url).dispose()
    Registry.open(pg_url, create=False).dispose()


def test_a_mistyped_or_relative_url_names_the_workspace_registry_not_recover(
    workspace: Workspace,
    reg: Registry,
    pomlia: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """`POMLIA_DB_URL=sqlite:///<home>/registy.db` (a typo) or `sqlite:///relative.db`, while
    `<home>/registry.db` exists, was told to run `pomlia registry recover`, which made a
    second, partial registry. It names the workspace's registry now; recover is offered only
    when the workspace has no registry file. A relative path is read against the workspace
    folder, never the current one."""
    tiny_dataset(workspace, reg, "blood", sizes=(20, 4, 4))
    reg.dispose()
    monkeypatch.chdir(tmp_path)
    for url, said in (
        (f"sqlite:///{workspace.home / 'registy.db'}",) * 2,
        ("sqlite:///relative.db", f"sqlite:///{workspace.home / 'relative.db'}"),
    ):
        monkeypatch.setenv("POMLIA_DB_URL", url)
        err = one_error_line(pomlia(workspace.home, "data", "list"))
        assert f"no registry at {said}" in err and "recover" not in err, err
        assert f"the workspace's registry is {workspace.home / 'registry.db'}; did you" in err
        assert f"--db-url sqlite:///{workspace.home / 'registry.db'}?" in err
    assert not (tmp_path / "relative.db").exists()
    assert not (workspace.home / "registy.db").exists()
    assert not (workspace.home / "relative.db").exists()


def test_opening_a_version_by_workspace_creates_no_registry(tmp_path: Path) -> None:
    """`open_version(workspace, ref)`, the stable reader API, created an empty registry
    where the workspace had none (and then said the dataset was not found, known: none)."""
    from pomlia_hpc.data.store import open_version

    home = tmp_path / "ws"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    with pytest.raises(RegistryMissingError, match="does not exist"):
        open_version(ws, "blood")
    assert not (home / "registry.db").exists()
