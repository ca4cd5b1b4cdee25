"""`pomlia pipeline status` and `pipeline run --wait` when `sacct` does not answer: the wait
is as long as the workspace's `cluster.list_sacct_timeout_s` (as for `jobs list`), a line on
stderr says what it waits for, the states Slurm did not confirm are shown as last recorded
and marked `?`, and `--wait` asks again at its next poll instead of ending.

A fake `sacct` on PATH (a shell script) hangs for a minute on the calls it is told to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pomlia_hpc.cluster.records import record_submission, utcnow
from pomlia_hpc.config import read_yaml
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.pipeline import status
from pomlia_hpc.pipeline.runner import RUN_FILE, snapshot_spec
from pomlia_hpc.pipeline.spec import load_pipeline
from pomlia_hpc.pipeline.stage import StageContext
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.slow_sacct import pomlia_on_path, waited_for_sacct

SPEC = {
    "name": "p",
    "datasets": [{"name": "a", "medmnist": "bloodmnist"}],
    "encoder": {"name": "e", "epochs": 2},
}
POLLED = "2026-01-02T03:04:05+00:00"


def _slow_sacct(tmp_path: Path, slow_calls: int) -> Path:
    """A folder whose ``sacct`` hangs on its first ``slow_calls`` calls (slurmdbd busy), then
    says job 4242 completed; ``squeue`` hangs too. Calls are counted in ``sacct-calls``."""
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir()
    count = tmp_path / "sacct-calls"
    (bin_dir / "sacct").write_text(
        "#!/bin/sh\n"
        f'n=$(($(cat "{count}" 2>/dev/null || echo 0) + 1)); echo $n > "{count}"\n'
        f"if [ $n -le {slow_calls} ]; then exec sleep 60; fi\n"
        "echo '4242|COMPLETED|2026-01-02T03:05:00|2026-01-02T03:06:00|0:0'\n"
    )
    (bin_dir / "squeue").write_text("#!/bin/sh\nexec sleep 60\n")
    for name in ("sacct", "squeue"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _running_stage_job(workspace: Workspace, reg: Registry, tmp_path: Path) -> Path:
    """Pipeline ``p`` (file returned) submitted with profile slurm-local: its encoder stage
    job, Slurm 4242, recorded RUNNING as last confirmed at :data:`POLLED`."""
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(SPEC))
    ctx = StageContext(load_pipeline(file), workspace, reg)
    snapshot_spec(ctx, read_yaml(file), str(file))
    (job,) = record_submission(
        reg, backend="slurm", scheduler_ids=["4242"], name="p-encoder", folder=str(tmp_path)
    )
    with reg.session() as s:
        row = s.get(Job, job)
        assert row is not None
        row.state, row.meta = "RUNNING", {"polled_at": POLLED}
    run = {
        "mode": "chain",
        "profile": "slurm-local",
        "stages": {"encoder": {"action": "run", "job": job}},
        "submitted_at": "2026-01-02T03:00:00+00:00",
    }
    write_json_atomic(ctx.folder / RUN_FILE, run)
    return file


def test_status_waits_briefly_and_marks_what_slurm_did_not_confirm(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """It waited 60 s in silence, then ended with `error: sacct did not answer within 60 s`
    and no table."""
    (workspace.home / "pomlia.yaml").write_text("cluster:\n  list_sacct_timeout_s: 3\n")
    _running_stage_job(workspace, reg, tmp_path)
    res = pomlia_on_path(
        workspace.home, _slow_sacct(tmp_path, slow_calls=99), "pipeline", "status", "p"
    )
    out = waited_for_sacct(res, 3)
    assert (
        "did not answer within 3 s; the states shown are the last recorded ones, "
        "as of 2026-01-02 03:04:05 (marked ?)" in out
    ), out
    (encoder,) = [ln for ln in res.stdout.splitlines() if "encoder" in ln]
    assert "running?" in encoder and "RUNNING?" in encoder and "4242" in encoder
    with reg.session() as s:  # nothing written on a failed poll
        assert [r.state for r in s.query(Job)] == ["RUNNING"]


def test_run_wait_asks_again_at_the_next_poll(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`pipeline run FILE --wait` with the pipeline's stage job running: a slow sacct held it
    60 s, then ended it with `error: sacct did not answer within 60 s` (exit 2) while the
    job still ran. Now the unanswered polls are logged and the wait goes on until Slurm
    answers that the job ended."""
    (workspace.home / "pomlia.yaml").write_text("cluster:\n  list_sacct_timeout_s: 3\n")
    file = _running_stage_job(workspace, reg, tmp_path)
    bin_dir = _slow_sacct(tmp_path, slow_calls=2)  # the attach check and the first poll
    res = pomlia_on_path(
        workspace.home, bin_dir, "pipeline", "run", str(file), "--cluster", "slurm-local", "--wait"
    )
    out = waited_for_sacct(res, 3)
    assert "pipeline p is already running: p-encoder (4242, RUNNING?)" in out, out
    log = " ".join(res.stderr.split())  # the wait's progress lines: for people, on stderr
    assert "did not answer within 3 s; states marked ? are as last recorded" in log
    assert "encoder=running?" in log  # unconfirmed: waited for, not taken as ended
    assert "encoder=running?" not in out, out
    assert int((tmp_path / "sacct-calls").read_text()) >= 3  # asked again, then answered
    with reg.session() as s:
        assert [r.state for r in s.query(Job)] == ["COMPLETED"]


def test_the_pending_reasons_squeue_gets_what_sacct_left_of_the_one_limit(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pipeline status` gave the squeue for its pending stage jobs' reasons the whole
    `list_sacct_timeout_s` again after sacct had used most of it: it could wait twice the
    limit. squeue gets what is left, and is not asked when nothing is."""
    file = _running_stage_job(workspace, reg, tmp_path)
    limit = workspace.list_sacct_timeout_s
    with reg.session() as s:
        (row,) = s.query(Job).all()
        row.state = "PENDING"
    clock = [100.0]
    asked: list[float] = []

    def sacct_taking(seconds: float) -> Callable[..., None]:
        def refresh(*args: Any, **kwargs: Any) -> None:
            clock[0] += seconds  # the time sacct took; it answered
            return None

        return refresh

    def words(job_ids: Sequence[str], timeout_s: float) -> dict[str, str]:
        asked.append(timeout_s)
        return {}

    monkeypatch.setattr(status.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(status, "pending_words", words)
    ctx = StageContext(load_pipeline(file), workspace, reg)
    monkeypatch.setattr(status, "refresh_jobs_within", sacct_taking(0.75 * limit))
    status.pipeline_status(ctx)
    assert asked == [pytest.approx(0.25 * limit)]
    monkeypatch.setattr(status, "refresh_jobs_within", sacct_taking(limit))
    status.pipeline_status(ctx)
    assert asked == [pytest.approx(0.25 * limit)]  # nothing left: squeue not asked


def test_status_marks_a_node_failure_slurm_may_have_requeued(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage job recorded NODE_FAIL a minute ago may have been requeued since: with sacct
    not answering, its state was shown as a certain end, unmarked."""
    file = _running_stage_job(workspace, reg, tmp_path)
    with reg.session() as s:
        (row,) = s.query(Job).all()
        row.state, row.ended_at = "NODE_FAIL", utcnow() - timedelta(minutes=1)
    problem = "sacct: slurmdbd did not answer within 3 s"
    monkeypatch.setattr(status, "refresh_jobs_within", lambda *a, **kw: problem)
    ctx = StageContext(load_pipeline(file), workspace, reg)
    (encoder,) = [st for st in status.pipeline_status(ctx) if st.stage == "encoder"]
    assert (encoder.job_state, encoder.unsure) == ("NODE_FAIL", problem)
