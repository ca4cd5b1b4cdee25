"""An AutoML study whose trials are jobs on the real single-node Slurm: two at once, one of
them cancelled with ``scancel`` (recorded as cancelled, not crashed), and the study still
finishes."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from pomlia_hpc.automl import records
from pomlia_hpc.automl.space import SpaceOptions
from pomlia_hpc.automl.study import StudyResult, create_study, run_study
from pomlia_hpc.cluster.batch import jobs_named
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import FAST, tiny_task

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm")]


@pytest.mark.timeout(1200)
def test_slurm_trials_in_parallel_and_a_cancelled_one(workspace: Workspace) -> None:
    reg = Registry.open(workspace.db_url)
    # Enough training images that the two parallel trials overlap for seconds, not a moment.
    tiny_task(workspace, reg, "blood", sizes=(768, 24, 24))
    slow = {**FAST, "batch_size": 32, "augmentation": "flip_crop"}
    spec = create_study(
        reg,
        workspace,
        "blood",
        name="sl",
        n_trials=3,
        max_epochs=2,
        min_epochs=1,
        eta=2,
        parallel=2,
        executor="slurm-local",
        space=SpaceOptions(archs=("small_cnn",)),
        initial_configs=[FAST, slow],
        n_initial=2,
        resources={"mem_gb": 3},
    )
    out: dict[str, StudyResult | BaseException] = {}

    def drive() -> None:
        try:
            out["result"] = run_study(reg, workspace, spec, poll_s=0.5)
        except BaseException as exc:  # re-raised below, in the test's thread
            out["result"] = exc

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    # Wait until two trials are RUNNING on Slurm at the same time, then cancel the one that
    # started last: it has the most work left. squeue, not sacct, because the accounting can
    # still say RUNNING for a job that has just ended, and a job that ended cannot be cancelled.
    deadline = time.time() + 300  # the first trial runs alone first, importing torch
    victim: str | None = None
    while victim is None:
        assert time.time() < deadline, "two trials never ran at the same time"
        victim = newest_of_two_running(reg)
        time.sleep(0.2)
    subprocess.run(["scancel", victim], check=True)
    driver.join(timeout=600)
    assert not driver.is_alive(), "the study did not finish"
    result = out["result"]
    if isinstance(result, BaseException):
        raise result

    runs = records.study_runs(reg, "sl")
    assert len(runs) == 3
    with reg.session() as s:
        by_sched = {s.get(Job, r.job_id).scheduler_id: r for r in runs}  # type: ignore[union-attr]
    cancelled = by_sched[victim]
    assert cancelled.status == "cancelled" and cancelled.metrics["state"] == "CANCELLED"
    # one line, the cause (not submitit's multi-line text)
    assert (
        "cancelled" in cancelled.metrics["cause"] and cancelled.error == cancelled.metrics["cause"]
    )
    # Its cost is the job's own run time (sacct's Start to End), not the driver's noticing.
    with reg.session() as s:
        job = s.get(Job, cancelled.job_id)
        assert job is not None and job.started_at is not None and job.ended_at is not None
        assert cancelled.cost_s == (job.ended_at - job.started_at).total_seconds()
    assert (result.n_crashed, result.n_cancelled, result.n_ok) == (0, 1, 2)
    assert result.model_name == "sl-best"
    ok = [r for r in runs if r.status == "ok"]
    assert all(r.metrics["device"] == "cpu" and r.cost_s for r in ok)


def newest_of_two_running(reg: Registry) -> str | None:
    """The Slurm id of the later-started of two RUNNING trials of study "sl", else None.

    Asks squeue (by job name) and keeps this study's jobs only: other tests may have jobs of
    the same name on the same cluster."""
    with reg.session() as s:
        jobs = [
            s.get(Job, r.job_id)
            for r in records.study_runs(reg, "sl")
            if r.status == "running" and r.job_id is not None
        ]
    ours = {j.scheduler_id: j.name for j in jobs if j is not None}
    running = [
        q
        for name in set(ours.values())
        for q in jobs_named(name)
        if q.job_id in ours and q.state == "RUNNING"
    ]
    if len(running) != 2:
        return None
    return max(running, key=lambda q: (q.begin, int(q.job_id))).job_id


@pytest.mark.timeout(600)
def test_global_cluster_option_reaches_the_studys_trials(workspace: Workspace) -> None:
    """`pomlia --cluster slurm-local automl run ...` (no --executor) ran its trials on the
    local executor: the global profile now is the study's executor, trials are Slurm jobs."""
    from tests.fixtures.cli import cli_ok

    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood")
    out = cli_ok(
        "--cluster", "slurm-local", "automl", "run", "blood", "--study", "gc", "--trials", "1",
        "--max-epochs", "1", "--min-epochs", "1", "--no-final", "--archs", "small_cnn",
        "--mem-gb", "3",
    )  # fmt: skip
    assert "executor 'slurm-local'" in " ".join(out.split())
    runs = records.study_runs(reg, "gc")
    assert runs and all(r.job_id is not None for r in runs)
    with reg.session() as s:
        jobs = [s.get(Job, r.job_id) for r in runs]
    assert all(j is not None and j.backend == "slurm" for j in jobs), [j.backend for j in jobs if j]
    reg.dispose()
