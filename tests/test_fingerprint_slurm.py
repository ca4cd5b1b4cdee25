"""Fingerprint jobs on the real single-node Slurm: extraction as a Slurm array, and encoder
training that is preempted (USR2), requeued, and resumes from its last epoch checkpoint."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import select

from pomlia_hpc.cluster import Executor
from pomlia_hpc.data.store import open_version
from pomlia_hpc.fingerprint.extract import extract, plan_extraction
from pomlia_hpc.fingerprint.loader import Source
from pomlia_hpc.fingerprint.shards import read_embeddings, run_shard
from pomlia_hpc.fingerprint.train import TrainConfig, TrainJob, encoder_dir
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm", "restore_torch_threads")]


def test_extraction_as_slurm_array(workspace: Workspace, reg: Registry) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(40, 8, 16), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    ex = Executor.from_profile("slurm-local", workspace.jobs, reg)
    (res,) = extract(reg, workspace, "enc", [ref], executor=ex, shards=2, batch_size=16)
    assert (res.shards, res.shards_run, res.status) == (2, 2, "complete")
    with reg.session() as s:
        rows = list(s.scalars(select(Job).where(Job.name == "fingerprint-extract")))
    assert len({r.array_job_id for r in rows}) == 1 and {r.state for r in rows} == {"COMPLETED"}
    store = open_version(reg, ref)
    out = workspace.path("embeddings", "enc", "blood", f"{store.version}.zarr")
    on_slurm = read_embeddings(out)
    # The same shards in this process (1 thread, like a 1-CPU Slurm task): same bits.
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=2, batch_size=16, force=True)
    for spec in plan.specs:
        run_shard(replace(spec, threads=1))
    np.testing.assert_array_equal(on_slurm.view(np.uint32), read_embeddings(out).view(np.uint32))


def test_training_preempted_requeues_and_resumes(workspace: Workspace, reg: Registry) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(256, 4, 4), chunk_rows=32)
    store = open_version(reg, ref)
    cfg = TrainConfig.model_validate(
        {"encoder": {"latent_dim": 2}, "epochs": 4, "batch_size": 16, "num_workers": 1}
    )
    out = encoder_dir(workspace, "ae")
    ex = Executor.from_profile("slurm-local", workspace.jobs, reg)
    h = ex.submit(TrainJob(cfg, [Source(str(store.path), 0, 256)], str(out)), name="ae-train")
    latest = out / "latest.json"
    deadline = time.time() + 240
    while not latest.exists():
        assert time.time() < deadline, "no epoch finished within 240 s"
        assert not h.done(), "the job ended before it could be preempted"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", h.job_id], check=True)
    res = h.result()
    assert res["resumed_from"] >= 1  # the last attempt started after a checkpoint
    assert len(res["loss_curve"]) == 4
    epochs = [json.loads(x)["epoch"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 5))  # every epoch once, none repeated
    with reg.session() as s:
        row = s.scalar(select(Job).where(Job.name == "ae-train"))
        assert row is not None and row.state == "COMPLETED" and row.requeue_count >= 1
