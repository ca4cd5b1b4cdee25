"""Shared fixtures: workspaces, registries on SQLite and PostgreSQL, the local Slurm cluster.

Tests that need a service (Slurm, PostgreSQL) skip with a message saying how to start it, except
under CI (``CI=true``) where a missing service is a failure: CI must execute them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get(
    "POMLIA_TEST_PG_URL", "postgresql+psycopg://pomlia:pomlia@127.0.0.1:5432/pomlia_test"
)
REPO = Path(__file__).resolve().parents[1]


def _missing(what: str, how: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not running under CI; .ci/run must start it ({how})")
    pytest.skip(f"{what} not running; start it with `{how}`")


@pytest.fixture
def wide_console() -> Iterator[None]:
    """Rich wraps tables at 80 columns off a terminal; widen so each table row stays one line."""
    from pomlia_hpc.cli.app import console

    old = console.width
    console.width = 250
    yield
    console.width = old


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A fresh workspace in tmp_path, also selected for the CLI through POMLIA_HOME."""
    home = tmp_path / "home"
    monkeypatch.setenv("POMLIA_HOME", str(home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    monkeypatch.delenv("POMLIA_CLUSTER", raising=False)
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    return ws


@pytest.fixture
def reg(workspace: Workspace) -> Iterator[Registry]:
    """The workspace's own registry (SQLite)."""
    r = Registry.open(workspace.db_url)
    yield r
    r.dispose()


@pytest.fixture
def restore_torch_threads() -> Iterator[None]:
    """Jobs run in the test process set torch's thread count; put it back afterwards."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def pg_available() -> bool:
    try:
        import psycopg

        dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL on the test PostgreSQL server whose search_path is a fresh, private schema."""
    if not pg_available():
        _missing("PostgreSQL test server", "scripts/pg-local.sh start")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Registry URL: run the test once on SQLite and once on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def registry(db_url: str) -> Iterator[Registry]:
    reg = Registry.open(db_url)
    yield reg
    reg.dispose()


def slurm_available() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and any(
        s.strip().rstrip("*") in ("idle", "mixed", "allocated") for s in out.stdout.split()
    )


@pytest.fixture(scope="session")
def slurm() -> None:
    """Requires the single-node Slurm cluster of scripts/slurm-local.sh."""
    if not slurm_available():
        _missing("the local Slurm cluster", "bash scripts/slurm-local.sh start")


@pytest.fixture
def shared_tmp(tmp_path: Path) -> Path:
    """A temporary folder that Slurm jobs can reach (tmp_path is on the same machine here)."""
    return tmp_path


def pytest_configure(config: pytest.Config) -> None:
    import cloudpickle
    import jobfns  # tests/ is on sys.path (rootdir conftest)

    cloudpickle.register_pickle_by_value(jobfns)
