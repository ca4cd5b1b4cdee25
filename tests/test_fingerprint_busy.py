"""Two `fingerprint train -n NAME` at once trained into the same folder: the second is refused
while a job training NAME is queued or running, naming it and how to cancel it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster import Executor
from pomlia_hpc.cluster.cancel import cancel_recorded_job
from pomlia_hpc.cluster.records import mark_cancelled
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.fingerprint import busy
from pomlia_hpc.fingerprint.busy import one_training, training_job_name
from pomlia_hpc.fingerprint.train import encoder_dir, train_encoder
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, tiny_encoder_config
from tests.fixtures.fake_slurm import FakeSlurm
from tests.fixtures.lock_probe import lock_states, on_path, probe_commands


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


@pytest.mark.usefixtures("restore_torch_threads")  # the training runs in this process
def test_fingerprint_train_is_refused_while_a_job_trains_the_name(
    workspace: Workspace, reg: Registry
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4))
    job_id = _live_job(reg, "aeS")
    # The refusal and the job records are under test, not the job process: the training runs
    # in this process (the debug executor records its job as the others do).
    ex = Executor.from_profile("debug", workspace.jobs, reg)
    cfg = tiny_encoder_config(1).model_copy(update={"batch_size": 8, "max_images_per_dataset": 8})
    with pytest.raises(PomliaError, match=f"pomlia jobs cancel {job_id}"):
        train_encoder(reg, workspace, "aeS", [ref], cfg, executor=ex)
    assert not encoder_dir(workspace, "aeS").exists()  # nothing written, no job submitted
    with reg.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
    mark_cancelled(reg, job_id)
    enc = train_encoder(reg, workspace, "aeS", [ref], cfg, executor=ex)  # one step of 8
    assert enc.name == "aeS" and enc.job_id != job_id


def _slurm_job(reg: Registry, name: str, scheduler_id: str) -> int:
    with reg.session() as s:
        job = Job(
            backend="slurm",
            scheduler_id=scheduler_id,
            name=training_job_name(name),
            state="RUNNING",
        )
        s.add(job)
        s.flush()
        return job.id


def test_a_slurm_job_the_scheduler_forgot_does_not_block_the_name(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """A Slurm job purged from accounting (neither squeue nor sacct knows it) kept its
    RUNNING row: the name was refused forever, and `jobs cancel` failed in scancel."""
    encoders = workspace.path("models", "encoders")
    gone = _slurm_job(reg, "aeS", "4242")
    with one_training(reg, encoders, "aeS"):
        pass
    with reg.session() as s:
        row = s.get(Job, gone)
        assert row is not None and row.state == "LOST" and row.ended_at is not None
        assert "neither squeue nor sacct" in (row.exit_cause or "")
    # `jobs cancel` of such a row: recorded LOST, not a scancel error.
    other = _slurm_job(reg, "aeT", "4243")
    assert cancel_recorded_job(reg, other) == "LOST"
    # When squeue cannot answer, a job sacct does not list may still train: refused.
    unsure = _slurm_job(reg, "aeU", "4244")
    fake_slurm.fail_next("squeue")
    with pytest.raises(PomliaError, match=f"job {unsure} "), one_training(reg, encoders, "aeU"):
        pass


def test_jobs_cancel_force_marks_a_job_of_another_host(workspace: Workspace, reg: Registry) -> None:
    """A local job of another host: `jobs cancel` said "cancel it there" and nothing here could
    free the name. `--force` marks the row CANCELLED, with a warning that no process was
    touched; the busy message and the refusal name it."""
    encoders = workspace.path("models", "encoders")
    job_id = _live_job(reg, "aeS")
    with pytest.raises(PomliaError) as refused, one_training(reg, encoders, "aeS"):
        pass
    assert f"`pomlia jobs cancel {job_id} --force`" in " ".join(str(refused.value).split())
    res = CliRunner().invoke(app, ["jobs", "cancel", str(job_id)])
    assert res.exit_code != 0
    text = " ".join(f"{res.output} {res.exception}".split())
    assert "runs on host another-node" in text and f"jobs cancel {job_id} --force" in text
    res = CliRunner().invoke(app, ["jobs", "cancel", str(job_id), "--force"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "warning" in out and "marked CANCELLED" in out and "was not touched" in out
    with reg.session() as s:
        row = s.get(Job, job_id)
        assert row is not None and row.state == "CANCELLED"
    with one_training(reg, encoders, "aeS"):
        pass


def test_the_name_lock_is_not_held_while_slurm_is_asked(
    workspace: Workspace,
    reg: Registry,
    fake_slurm: FakeSlurm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`sacct`/`squeue` ran under the encoder's lock: a slow controller blocked every other
    start of the name (and gave up after the lock's wait) for as long as it took to answer."""
    encoders = workspace.path("models", "encoders")
    gone = _slurm_job(reg, "aeS", "4242")  # Slurm is asked about it (then: LOST)
    log, bin_dir = tmp_path / "probe.log", tmp_path / "probe-bin"
    lock = encoders / ".aeS.train.lock"
    bodies = {cmd: f'exec "{fake_slurm.bin / cmd}" "$@"' for cmd in ("sacct", "squeue")}
    probe_commands(bin_dir, lock, log, bodies)
    monkeypatch.setenv("PATH", on_path(bin_dir))
    with one_training(reg, encoders, "aeS"):
        pass
    states = lock_states(log)
    assert "sacct free" in states and "squeue free" in states, states
    assert not [s for s in states if s.endswith("held")], states
    with reg.session() as s:
        row = s.get(Job, gone)
        assert row is not None and row.state == "LOST"


def test_a_training_submitted_while_slurm_answers_is_seen_under_the_lock(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slurm is asked before the lock: a start of the same name that submitted its job in the
    meantime must still refuse this one (the registry, read under the lock, decides)."""
    encoders = workspace.path("models", "encoders")
    first = _live_job(reg, "aeS")
    answered = busy.refresh_jobs
    racing: list[int] = []

    def meanwhile(registry: Registry, ids: object, **kw: object) -> int:
        if not racing:  # another start's job appears while the scheduler is being asked
            mark_cancelled(reg, first)
            racing.append(_live_job(reg, "aeS"))
        return answered(registry, ids, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(busy, "refresh_jobs", meanwhile)
    with pytest.raises(PomliaError) as refused, one_training(reg, encoders, "aeS"):
        pytest.fail("a second training of aeS was let through")
    (second,) = racing
    assert f"job {second} (RUNNING" in " ".join(str(refused.value).split())
