"""Two workspaces of one user, each with a model of the same name, each with its own nightly
chain, on the real Slurm. The chains' job name (`pomlia-monitor-<model>`) is the user's in
every workspace: the second workspace's `monitor schedule` was refused as "already
scheduled" (and with --replace, or `unschedule`, cancelled the first workspace's chain), and a
run of one chain that found the other's queued job submitted no successor, which ended it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster.batch import jobs_named
from pomlia_hpc.monitor.schedule import job_name
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.waiting import wait_until
from tests.monitor_support import demo_model

pytestmark = pytest.mark.slurm
runner = CliRunner()


@pytest.fixture
def twins(
    slurm: None, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Workspace, Workspace]]:
    """(model, workspace a, workspace b): the same model name registered in both."""
    model = f"twin-{os.getpid()}"
    other = Workspace(
        home=workspace.home.with_name("other"),
        db_url=f"sqlite:///{workspace.home.with_name('other') / 'registry.db'}",
        cluster_profile="local",
    )
    other.create()
    other_reg = Registry.open(other.db_url)
    demo_model(reg, workspace, name=model, n_ref=50)
    demo_model(other_reg, other, name=model, n_ref=50)
    other_reg.dispose()
    monkeypatch.setenv("POMLIA_CLUSTER", "slurm-local")
    yield model, workspace, other
    for ws in (workspace, other):
        runner.invoke(app, ["--home", str(ws.home), "monitor", "unschedule", model])
    wait_until(lambda: jobs_named(job_name(model)) == [], timeout=60, interval=0.5, what="end")


def pomlia(ws: Workspace, *args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["--home", str(ws.home), *args])
    error = f" {res.exception}" if res.exception is not None else ""
    return res.exit_code, " ".join((res.output + error).split())


def test_chains_of_one_model_name_in_two_workspaces_leave_each_other_alone(
    twins: tuple[str, Workspace, Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, a, b = twins
    schedule = ("monitor", "schedule", model, "--at", "", "--every", "1h")
    code, out = pomlia(a, *schedule)
    assert code == 0, out
    (job_a,) = jobs_named(job_name(model))
    code, out = pomlia(b, *schedule)
    assert code == 0, out  # not "already scheduled": that chain is a's
    (job_b,) = [j for j in jobs_named(job_name(model)) if j.job_id != job_a.job_id]

    # b's queued run, when it runs, submits b's next one: a's queued job is not b's.
    monkeypatch.setenv("SLURM_JOB_ID", job_b.job_id)
    code, out = pomlia(b, *schedule, "--chain")
    monkeypatch.delenv("SLURM_JOB_ID")
    assert code == 0 and "submitted, begins" in out, out
    assert len(jobs_named(job_name(model))) == 3

    code, out = pomlia(a, "monitor", "status", model, "--json")
    queued = json.loads(out)[0]["queued"]
    assert code == 0 and [q["scheduler_id"] for q in queued] == [job_a.job_id], out
    assert [q["state"] for q in queued] == ["PENDING"], out

    # Ending b's chain leaves a's queued.
    code, out = pomlia(b, "monitor", "unschedule", model)
    assert code == 0 and job_a.job_id not in out, out
    wait_until(
        lambda: [j.job_id for j in jobs_named(job_name(model))] == [job_a.job_id],
        timeout=60,
        interval=0.5,
        what="only a's job left",
    )
