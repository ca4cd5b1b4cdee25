"""A monitoring chain outlives a bad moment of its resubmission, on the real Slurm: a registry
out of reach (the next run is queued, unrecorded) and an sbatch that fails once (asked
again); a registry of a newer pomlia still ends it. The running job is played by the test:
``SLURM_JOB_ID`` set to the chain's queued job, which a job of the chain leaves out of its
"next run already queued" check."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster.batch import jobs_named
from pomlia_hpc.errors import ConfigError
from pomlia_hpc.monitor.schedule import job_name
from pomlia_hpc.monitor.schedule import resubmit as resubmit_next
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.waiting import wait_until
from tests.monitor_support import scheduled_hourly_chain

pytestmark = pytest.mark.slurm
runner = CliRunner()


@pytest.fixture
def chain(
    slurm: None, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A chain of its own model (job names are the user's, cluster-wide), its first run an
    hour ahead; the test runs as that job. Yields the chain's job name; ends it after."""
    monkeypatch.setenv("POMLIA_MONITOR_RESUBMIT_DELAY_S", "0")
    yield from scheduled_hourly_chain(reg, workspace, monkeypatch, "outage")


def resubmit(model: str) -> tuple[int, str]:
    """What the chain's job runs first (jobs/monitor.sbatch): exit status, output and error."""
    args = ["monitor", "schedule", model, "--every", "1h", "--at", "", "--chain"]
    res = runner.invoke(app, args)
    error = f" {res.exception}" if res.exception is not None else ""  # main() prints it
    return res.exit_code, " ".join((res.output + error).split())


def test_the_next_run_is_queued_while_the_registry_is_out_of_reach(
    chain: str, workspace: Workspace
) -> None:
    """The resubmission opened the registry first: a registry out of reach for a moment
    ("no registry at ...", a database server down) ended the chain for good."""
    db = workspace.home / "registry.db"
    away = db.with_name("registry.db.away")
    db.rename(away)
    try:
        code, out = resubmit(chain)
    finally:
        away.rename(db)
    assert code == 0, out
    assert "submitted, but not recorded: the registry could not be opened" in out, out
    pending = [j for j in jobs_named(job_name(chain)) if j.job_id != os.environ["SLURM_JOB_ID"]]
    assert len(pending) == 1, (pending, out)


def test_an_sbatch_that_fails_once_is_asked_again(
    chain: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One failed sbatch (a controller busy for a moment) ended the chain."""
    real = shutil.which("sbatch")
    assert real is not None
    shims = tmp_path / "shims"
    shims.mkdir()
    flag = tmp_path / "failed-once"
    (shims / "sbatch").write_text(
        "#!/bin/bash\n"
        f'if [ ! -e "{flag}" ]; then touch "{flag}"; '
        'echo "sbatch: error: Socket timed out on send/recv operation" >&2; exit 1; fi\n'
        f'exec "{real}" "$@"\n'
    )
    (shims / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    code, out = resubmit(chain)
    assert code == 0, out
    assert flag.exists()
    assert "could not submit the next run (sbatch: the Slurm controller (slurmctld" in out, out
    assert "did not answer (sbatch: error: Socket timed out" in out, out
    assert "trying again in 0 s (try 1 of 5)" in out, out
    assert "submitted, begins" in out, out
    assert len(jobs_named(job_name(chain))) == 2


def test_a_registry_of_a_newer_pomlia_still_ends_the_chain(
    chain: str, workspace: Workspace
) -> None:
    """As docs/guide/monitor.md ("Upgrading") says: the older install's chain stops."""
    db = workspace.home / "registry.db"
    with sqlite3.connect(db) as conn:
        (head,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    try:
        code, out = resubmit(chain)
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE alembic_version SET version_num = ?", (head,))
    assert code != 0 and "is newer than this pomlia" in out, out
    # The successor it queued before it opened the registry is cancelled again.
    wait_until(
        lambda: len(jobs_named(job_name(chain))) == 1, timeout=60, interval=0.5, what="cancel"
    )


def test_the_next_run_is_queued_before_the_registry_is_opened(
    chain: str, workspace: Workspace
) -> None:
    """A registry that hangs (a server out of reach) kept the job from queueing its successor
    until the job's time limit killed it: Slurm is asked first now."""
    queued_then: list[int] = []

    def registry_that_hangs() -> Registry:
        queued_then.append(len(jobs_named(job_name(chain))))
        raise ConfigError("registry: cannot open the database (timeout expired)")

    res = resubmit_next(registry_that_hangs, workspace, chain, every="1h", at=None)
    assert res.job_id is not None and queued_then == [2], (res, queued_then)
    assert "not recorded: the registry could not be opened (registry: cannot open" in res.note
