"""Two `fingerprint train -n NAME` at once trained into the same folder: the second is refused
while a job training NAME is queued or running, naming it and how to cancel it."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.records import mark_cancelled
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.fingerprint.busy import one_training, training_job_name
from pomlia_hpc.fingerprint.train import encoder_dir, train_encoder
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, tiny_encoder_config


def _live_job(reg: Registry, name: str) -> int:
    """A job training encoder ``name`` that the scheduler cannot be asked about from here (a
    local job of another host): it counts as training."""
    with reg.session() as s:
        job = Job(
            backend="local",
            scheduler_id="999999",
            name=training_job_name(name),
            state="RUNNING",
            meta={"host": "another-node"},
        )
        s.add(job)
        s.flush()
        return job.id


def test_a_second_training_of_one_encoder_is_refused(workspace: Workspace, reg: Registry) -> None:
    encoders = workspace.path("models", "encoders")
    with one_training(reg, encoders, "aeS"):  # the first start submits its job meanwhile
        job_id = _live_job(reg, "aeS")
    with pytest.raises(PomliaError) as refused, one_training(reg, encoders, "aeS"):
        pytest.fail("a second training of aeS was let through")
    message = " ".join(str(refused.value).split())
    assert f"job {job_id} (RUNNING" in message and f"pomlia jobs cancel {job_id}" in message
    with one_training(reg, encoders, "other"):  # another name is free
        pass
    mark_cancelled(reg, job_id)
    with one_training(reg, encoders, "aeS"):  # the first is over: a new start resumes it
        pass


def test_fingerprint_train_is_refused_while_a_job_trains_the_name(
    workspace: Workspace, reg: Registry
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4))
    job_id = _live_job(reg, "aeS")
    ex = Executor.from_profile("local", workspace.jobs, reg)
    with pytest.raises(PomliaError, match=f"pomlia jobs cancel {job_id}"):
        train_encoder(reg, workspace, "aeS", [ref], tiny_encoder_config(1), executor=ex)
    assert not encoder_dir(workspace, "aeS").exists()  # nothing written, no job submitted
    with reg.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
    mark_cancelled(reg, job_id)
    enc = train_encoder(reg, workspace, "aeS", [ref], tiny_encoder_config(1), executor=ex)
    assert enc.name == "aeS" and enc.job_id != job_id
