"""Stage jobs get the registry URL in their environment, never in a file of the workspace:
`pipeline run` pickled `db_url` (the PostgreSQL password in clear) into every stage job's
arguments, `jobs/<id>_submitted.pkl`, readable by whoever could read the workspace."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from pomlia_hpc.data.synth import write_lookalikes
from pomlia_hpc.pipeline import runner
from pomlia_hpc.pipeline.spec import parse_pipeline
from pomlia_hpc.pipeline.stage import read_json
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

pytestmark = pytest.mark.postgres


def files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.timeout(300)
def test_stage_jobs_run_without_the_password_in_any_workspace_file(
    workspace: Workspace, pg_url: str, tmp_path: Path
) -> None:
    password = make_url(pg_url).password
    assert password, pg_url
    secret = f":{password}@".encode()
    ws = dataclasses.replace(workspace, db_url=pg_url)
    reg = Registry.open(pg_url)
    try:
        (npz,) = write_lookalikes(tmp_path / "raw", scale=0.002, flags=["bloodmnist"])
        data = {"name": "sec", "datasets": [{"name": "blood", "file": str(npz)}]}
        spec = parse_pipeline(data, "sec.yaml", tmp_path)
        ctx = runner.context_for(ws, reg, spec, log=lambda _line: None)
        # Chain mode on the local backend: the stage jobs are pickled and started here as on
        # Slurm, which only adds sbatch.
        plan = dataclasses.replace(runner.make_plan(ctx, "local"), mode="chain")
        snapshot = runner.snapshot_spec(ctx, data, "sec.yaml")
        jobs = runner.submit(ctx, plan, snapshot)
        assert list(jobs) == ["data"], jobs
        record = ctx.record_path("data")
        deadline = time.monotonic() + 240
        status = None
        while time.monotonic() < deadline:
            status = read_json(record) or {}
            if status.get("status") in ("done", "failed"):
                break
            time.sleep(0.5)
        logs = "\n".join(p.read_text() for p in ws.jobs.glob("*_log.*"))
        # The job found the registry (it came with its environment) and ran the stage.
        assert status is not None and status.get("status") == "done", (status, logs)
        assert list(ws.jobs.glob("*_submitted.pkl")), "no job was pickled"
        assert files_holding(ws.home, secret) == []
    finally:
        reg.dispose()


def test_a_stage_job_without_the_registry_in_its_environment_says_so(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site whose sbatch drops the environment (--export=NONE) gets one line naming the
    variable and the registry expected, not a job on the default SQLite registry."""
    from pomlia_hpc.errors import ConfigError

    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    job = runner.StageJob("spec.json", "data", str(workspace.home), "postgresql://u:***@h/r", "x")
    with pytest.raises(
        ConfigError, match=r"no POMLIA_DB_URL .* registry postgresql://u:\*\*\*@h/r"
    ):
        job()
    monkeypatch.setenv("POMLIA_DB_URL", "postgresql://u:pw@other/r")
    with pytest.raises(ConfigError, match="names the registry postgresql://u:\\*\\*\\*@other/r"):
        job()
