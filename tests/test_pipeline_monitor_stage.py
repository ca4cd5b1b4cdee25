"""The pipeline's monitor stage records the same crontab lines as `monitor schedule` suggests:
with the registry URL (a workspace on PostgreSQL: a POMLIA_DB_URL line) and the alarm action."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import pomlia_hpc.monitor.reference as reference
import pomlia_hpc.serve.reference as serve_reference
from pomlia_hpc.pipeline.spec import parse_pipeline
from pomlia_hpc.pipeline.stage import StageContext
from pomlia_hpc.pipeline.stages_monitor import MONITOR
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace


def _run_stage(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    monitor: dict[str, str],
) -> tuple[dict[str, Any], str]:
    """The monitor stage of a minimal pipeline after a done deploy stage, on a workspace
    whose registry is ``url``: its outputs and its log."""
    monkeypatch.setattr(reference, "create_reference", lambda _reg, model: tmp_path / "r.npz")
    monkeypatch.setattr(serve_reference, "few_images_warning", lambda _ref, _model: None)
    spec = parse_pipeline(
        {
            "name": "p",
            "datasets": [{"name": "blood", "medmnist": "bloodmnist"}],
            "tasks": [{"name": "t", "dataset": "blood", "metric": "acc"}],
            "automl": {},
            "export": {},
            "deploy": {},
            "monitor": monitor,
        },
        "p.yaml",
        tmp_path,
    )
    lines: list[str] = []
    ctx = StageContext(spec, dataclasses.replace(workspace, db_url=url), reg, log=lines.append)
    ctx.record_path("deploy").parent.mkdir(parents=True)
    record = {"status": "done", "outputs": {"t": {"model": "blood-model"}}}
    ctx.record_path("deploy").write_text(json.dumps(record))
    return MONITOR.run(ctx), "\n".join(lines)


def test_the_cron_line_names_the_registry_and_the_alarm_action(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage built its own line without --db-url and --on-alarm: run from cron, the
    monitor read the default SQLite registry and never started the retrain."""
    url = "postgresql://pomlia@db.example/registry"
    monitor = {"at": "03:15", "window": "2d", "on_alarm": "pomlia loop run s"}
    out, _ = _run_stage(workspace, reg, tmp_path, monkeypatch, url, monitor)
    cron = out["t"]["cron"]
    assert out["t"]["scheduled"] is False, cron
    env, line = cron.splitlines()
    assert env == f"POMLIA_DB_URL={url}" and "--db-url" not in line, cron
    assert line.startswith("15 3 * * * ") and "--on-alarm 'pomlia loop run s'" in line, cron
    assert "monitor run blood-model --window 2d" in line, cron


def test_the_recorded_cron_line_hides_the_registry_password(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cron line with `--db-url postgresql://user:secret@...` was stored in the stage's
    outputs and its log as is: the password is `***` there now, and the log says how to give
    cron the real one."""
    url = "postgresql://pomlia:s3cret@db.example/registry"
    out, log = _run_stage(
        workspace, reg, tmp_path, monkeypatch, url, {"at": "03:15", "window": "2d"}
    )
    assert "s3cret" not in json.dumps(out) and "s3cret" not in log
    assert "POMLIA_DB_URL=postgresql://pomlia:***@db.example/registry\n" in out["t"]["cron"]
    assert "password is shown as ***" in log and "POMLIA_DB_URL line" in log


def test_the_recorded_cron_line_hides_a_password_given_as_a_query_parameter(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`?password=s3cret` (libpq's other spelling) was stored in the cron line as is."""
    url = "postgresql://pomlia@db.example/registry?password=s3cret"
    out, log = _run_stage(
        workspace, reg, tmp_path, monkeypatch, url, {"at": "03:15", "window": "2d"}
    )
    assert "s3cret" not in json.dumps(out) and "s3cret" not in log
    assert "registry?password=***\n" in out["t"]["cron"]
    assert "password is shown as ***" in log


def test_on_slurm_the_stage_names_the_registry_job_with_slurms_id_beside_it(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said `nightly monitor job 28` (Slurm's id), which `pomlia jobs show` does not take."""
    from datetime import UTC, datetime

    import pomlia_hpc.monitor.schedule as schedule

    def scheduled(*_a: object, **_k: object) -> schedule.Scheduled:
        path = tmp_path / "x"
        return schedule.Scheduled("28", datetime.now(UTC), path, path, None, None, record_id=21)

    monkeypatch.setattr(schedule, "schedule", scheduled)
    monkeypatch.setenv("POMLIA_CLUSTER", "slurm-local")
    slurm = dataclasses.replace(workspace, cluster_profile="slurm-local")
    out, log = _run_stage(slurm, reg, tmp_path, monkeypatch, workspace.db_url, {"at": "02:00"})
    assert "nightly monitor job 21 (slurm 28)," in log, log
    assert out["t"]["scheduled"] is True


def test_the_plan_sizes_the_nightly_job_as_its_script_does(tmp_path: Path) -> None:
    """The dry run on haicore showed the nightly monitor as `8 CPU, 1 GPU, 64 GB, 240 min`
    (the profile's resources), a GPU node for 4 hours a night; its jobs run
    jobs/monitor.sbatch, which asks for a few CPUs, no GPU and an hour, on the profile's
    partition."""
    from pomlia_hpc.config import load_cluster_profile
    from pomlia_hpc.monitor.placement import CHAIN_SCRIPT

    spec = parse_pipeline(
        {
            "name": "p",
            "datasets": [{"name": "blood", "medmnist": "bloodmnist"}],
            "tasks": [{"name": "t", "dataset": "blood", "metric": "acc"}],
            "automl": {},
            "export": {},
            "deploy": {},
            "monitor": {},
        },
        "p.yaml",
        tmp_path,
    )
    (job,) = MONITOR.jobs(spec, load_cluster_profile("haicore"))
    size = job.resources
    script = CHAIN_SCRIPT.read_text()
    assert (size.gpus_per_node, size.partition, size.time_min) == (0, "normal", 60)
    assert "#SBATCH --time=01:00:00\n" in script and "gres" not in script
    assert f"#SBATCH --cpus-per-task={size.cpus_per_task}\n" in script
    assert f"#SBATCH --mem={size.mem_gb:g}G\n" in script
    assert job.gpu_hours == 0
