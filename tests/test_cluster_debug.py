"""A ``debug`` job (in this process) that raises: its failure is its outcome, recorded like a
local job's, never raised out of ``done()``, never a ``(Pdb)`` prompt without a terminal."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from pomlia_hpc.cluster import Executor, JobFailedError
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.fingerprint.train import TrainConfig, train_encoder
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures import jobfns
from tests.fixtures.factories import make_dataset


def test_a_failing_debug_job_is_recorded_failed_once(tmp_path: Path, reg: Registry) -> None:
    calls = tmp_path / "calls"

    def fails() -> None:
        with calls.open("a") as fh:
            fh.write("x")
        jobfns.boom("no luck")

    handle = Executor.from_profile("debug", tmp_path / "jobs", reg).submit(fails, name="f")
    assert handle.done()  # it ran, and ended: not its ValueError out of done()
    with pytest.raises(JobFailedError, match="no luck") as failed:
        handle.result()
    assert failed.value.state == "FAILED" and "ValueError: no luck" in failed.value.cause
    assert handle.state == "FAILED" and handle.done()
    assert calls.read_text() == "x"  # run once, not again on every look
    with reg.session() as s:
        row = s.scalars(select(Job)).one()
        assert (row.state, row.exit_cause) == ("FAILED", "ValueError: no luck")
        assert row.ended_at is not None


def test_a_failing_debug_job_asks_no_debugger_without_a_terminal(tmp_path: Path) -> None:
    script = (
        "from pomlia_hpc.cluster import Executor, JobFailedError\n"
        "from tests.fixtures import jobfns\n"
        f"h = Executor.from_profile('debug', {str(tmp_path / 'jobs')!r}).submit(jobfns.boom, 'x')\n"
        "try:\n    h.result()\nexcept JobFailedError as exc:\n    print('failed:', exc.cause)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        input="",  # a pipe, as from a script or a CI job: nobody answers a debugger
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "failed: ValueError: x" in out.stdout
    assert "(Pdb)" not in out.stdout + out.stderr


def test_an_encoder_job_that_failed_on_debug_does_not_hold_the_name(
    workspace: Workspace, reg: Registry
) -> None:
    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4), chunk_rows=16)
    config = TrainConfig.model_validate({"epochs": 1, "batch_size": 16, "num_workers": 0})
    chunks = [p for p in workspace.path("stores").glob("*/*.zarr/images/c/**/*") if p.is_file()]
    assert chunks, "no image chunk found"
    for chunk in chunks:
        chunk.write_bytes(b"damaged")  # the job fails reading it
    for _ in range(2):  # again: the same failure, not "being trained by job N (PENDING)"
        with pytest.raises(PomliaError) as failed:
            train_encoder(reg, workspace, "ae", [a], config)
        assert "being trained by" not in str(failed.value)
    with reg.session() as s:
        assert [j.state for j in s.scalars(select(Job))] == ["FAILED", "FAILED"]
