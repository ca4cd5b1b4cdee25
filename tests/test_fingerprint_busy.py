"""Two `fingerprint train -n NAME` at once trained into the same folder: the second is refused
while a job training NAME is queued or running, naming it and how to cancel it."""

from __future__ import annotations

import pytest

from pomlia_hpc.cluster.records import mark_cancelled
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.fingerprint.busy import one_training, training_job_name
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace


def test_a_second_training_of_one_encoder_is_refused(workspace: Workspace, reg: Registry) -> None:
    encoders = workspace.path("models", "encoders")
    with one_training(reg, encoders, "aeS"):  # the first start submits its job meanwhile
        with reg.session() as s:
            # a job the scheduler cannot be asked about from here (another host's local job)
            job = Job(
                backend="local",
                scheduler_id="999999",
                name=training_job_name("aeS"),
                state="RUNNING",
                meta={"host": "another-node"},
            )
            s.add(job)
            s.flush()
            job_id = job.id
    with pytest.raises(PomliaError) as refused:
        with one_training(reg, encoders, "aeS"):
            pytest.fail("a second training of aeS was let through")
    message = " ".join(str(refused.value).split())
    assert f"job {job_id} (RUNNING" in message and f"pomlia jobs cancel {job_id}" in message
    with one_training(reg, encoders, "other"):  # another name is free
        pass
    mark_cancelled(reg, job_id)
    with one_training(reg, encoders, "aeS"):  # the first is over: a new start resumes it
        pass
