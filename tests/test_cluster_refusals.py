"""Submissions sbatch refuses (a GPU on a cluster without gres, too much memory) end in one
line naming the option and sbatch's message, and leave nothing behind: an ``extract --force``
keeps its finished vectors, a training leaves no folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster import Executor, JobFailedError, refusal
from pomlia_hpc.cluster.failures import exit_line, timeout_cause
from pomlia_hpc.cluster.refusal import never_starts, signal_delay_warning
from pomlia_hpc.config import load_cluster_profile
from pomlia_hpc.errors import UNAVAILABLE_EXIT, ClusterError
from pomlia_hpc.fingerprint.candidates import fingerprint_set
from pomlia_hpc.fingerprint.extract import extract, finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.shards import marker_dir, read_embeddings, run_shard
from pomlia_hpc.fingerprint.train import encoder_dir, train_encoder
from pomlia_hpc.registry import FingerprintSet, Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder, tiny_encoder_config
from tests.fixtures.fake_slurm import FakeSlurm

GRES = "sbatch: error: Invalid generic resource (gres) specification"


def _slurm(workspace: Workspace, reg: Registry) -> Executor:
    return Executor.from_profile("slurm-local", workspace.jobs, reg)


def _fn() -> int:
    return 1


def test_a_refused_submission_is_one_line_naming_the_option(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    ex = _slurm(workspace, reg)
    fake_slurm.fail_next("sbatch", GRES)
    with pytest.raises(ClusterError) as err:
        ex.submit(_fn, name="one", resources={"gpus_per_node": 1})
    text = str(err.value).splitlines()[0]
    assert "gpus_per_node (--gpus)" in text and GRES in text and "1 GPU" in text
    fake_slurm.fail_next("sbatch", "sbatch: error: Memory specification can not be satisfied")
    with pytest.raises(ClusterError, match=r"check mem_gb: sbatch: error: Memory"):
        ex.map_array(_fn, [1, 2], name="arr", resources={"mem_gb": 999})


def test_extract_force_refused_keeps_the_finished_vectors(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=2, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    fs, _ = fingerprint_set(reg, "enc", ref)
    out = Path(fs.embeddings_path)
    before = read_embeddings(out)
    markers = sorted(p.name for p in marker_dir(out).iterdir())
    fake_slurm.fail_next("sbatch", GRES)
    with pytest.raises(ClusterError, match="gpus_per_node"):
        extract(
            reg,
            workspace,
            "enc",
            [ref],
            executor=_slurm(workspace, reg),
            shards=2,
            force=True,
            resources={"gpus_per_node": 1},
        )
    np.testing.assert_array_equal(read_embeddings(out), before)
    assert sorted(p.name for p in marker_dir(out).iterdir()) == markers
    again, _ = fingerprint_set(reg, "enc", ref)  # complete, not "extraction running"
    assert again.status == "complete" and again.mean == fs.mean
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".aside")]


def _split(workspace: Workspace, reg: Registry) -> Executor:
    """A Slurm executor that submits arrays in parts of two tasks."""
    return Executor.from_profile("slurm-local", workspace.jobs, reg, max_array_size=2)


def _job_rows(reg: Registry) -> list[Job]:
    with reg.session() as s:
        rows = list(s.scalars(select(Job).order_by(Job.id)))
        s.expunge_all()
    return rows


def test_a_refused_later_part_of_a_split_array_cancels_the_parts_before_it(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """Part 2 of 3 refused by sbatch left part 1 queued: it ran alone, unwatched."""
    fake_slurm.hold()
    fake_slurm.fail_next("sbatch", GRES, after=1)
    with pytest.raises(ClusterError) as err:
        _split(workspace, reg).map_array(_fn, [1, 2, 3, 4, 5], name="arr")
    (first,) = {t["array_id"] for t in fake_slurm.submitted()}
    text = " ".join(str(err.value).split())
    assert "sbatch refused job 'arr'" in text and "part 2 of 3" in text
    assert f"were cancelled (Slurm job {first})" in text
    assert {fake_slurm.state(sid) for sid in fake_slurm.task_ids(first)} == {"CANCELLED"}
    rows = _job_rows(reg)
    assert len(rows) == 2 and {r.state for r in rows} == {"CANCELLED"}
    assert all("part 2 of 3" in (r.exit_cause or "") for r in rows)


def test_extract_split_array_refused_leaves_no_record_of_its_parts(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """An extraction whose second array part sbatch refused: its first part must not run on,
    and no fingerprint set may stay "running" for shards that nothing runs."""
    fresh = make_dataset(workspace, reg, "blood", sizes=(40, 8, 16), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    fake_slurm.hold()
    fake_slurm.fail_next("sbatch", GRES, after=1)
    with pytest.raises(ClusterError, match="were cancelled"):
        extract(reg, workspace, "enc", [fresh], executor=_split(workspace, reg), shards=4)
    assert {fake_slurm.state(sid) for sid in fake_slurm.tasks()} == {"CANCELLED"}
    assert {r.state for r in _job_rows(reg)} == {"CANCELLED"}
    with reg.session() as s:  # no record, no embeddings: as before the command
        assert s.scalar(select(func.count()).select_from(FingerprintSet)) == 0
    assert not workspace.path("embeddings", "enc", "blood").exists() or not [
        p for p in workspace.path("embeddings", "enc", "blood").iterdir()
    ]
    # A set with shards to run again (one ran, then the rest failed) keeps its "failed".
    plan = plan_extraction(reg, workspace, "enc", [fresh], shards=4, threads=1)
    run_shard(plan.specs[0])
    (res,) = finish_extraction(reg, plan)
    assert res.status == "failed"
    fake_slurm.fail_next("sbatch", GRES, after=1)
    with pytest.raises(ClusterError, match="were cancelled"):
        extract(reg, workspace, "enc", [fresh], executor=_split(workspace, reg), shards=4)
    with reg.session() as s:
        assert s.scalars(select(FingerprintSet.status)).one() == "failed"


def test_train_refused_leaves_no_encoder_folder(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8), chunk_rows=16)
    fake_slurm.fail_next("sbatch", GRES)
    with pytest.raises(ClusterError, match="gpus_per_node"):
        train_encoder(
            reg,
            workspace,
            "fp2",
            [ref],
            tiny_encoder_config(1),
            executor=_slurm(workspace, reg),
            resources={"gpus_per_node": 1},
        )
    assert not encoder_dir(workspace, "fp2").exists()


@pytest.mark.parametrize(
    ("reason", "permanent"),
    [
        ("PartitionConfig", True),
        ("BadConstraints", True),
        ("QOSMaxCpuPerJobLimit", True),
        ("ReqNodeNotAvail, UnavailableNodes:", False),
        ("ReqNodeNotAvail, UnavailableNodes:node3", False),
        ("ReqNodeNotAvail, Reserved for maintenance", False),
        ("ReqNodeNotAvail, May be reserved for other job", False),
        ("PartitionNodeLimit", False),
        ("Resources", False),
        ("Priority", False),
        (None, False),
    ],
)
def test_pending_reasons_that_never_clear(reason: str | None, permanent: bool) -> None:
    assert never_starts(reason) is permanent


def test_a_job_slurm_will_never_start_is_cancelled_naming_request_and_reason(
    workspace: Workspace,
    reg: Registry,
    fake_slurm: FakeSlurm,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(refusal, "REASON_CHECK_S", 0.0)
    fake_slurm.hold()
    handle = _slurm(workspace, reg).submit(_fn, name="big", resources={"cpus_per_task": 64})
    fake_slurm.set_reason(handle.job_id, "Resources")  # may clear: keeps waiting
    assert not handle.done() and handle.pending_reason == "Resources"
    assert "pending: Resources" in capsys.readouterr().err  # a note for people: stderr
    fake_slurm.set_reason(handle.job_id, "PartitionConfig")
    with pytest.raises(JobFailedError) as err:
        handle.result()
    text = str(err.value)
    assert "ended CANCELLED" in text and "64 CPU" in text and "PartitionConfig" in text
    assert ["scancel", handle.job_id] in [c[:2] for c in fake_slurm.calls("scancel")]


def test_jobs_show_gives_the_pending_reason(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    fake_slurm.hold()
    handle = _slurm(workspace, reg).submit(_fn, name="waits")
    fake_slurm.set_reason(handle.job_id, "PartitionConfig")
    res = CliRunner().invoke(app, ["jobs", "show", str(handle.record_id)])
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.output.splitlines() if "pending_reason" in ln]
    assert "PartitionConfig (Slurm will never start it" in line


def test_a_job_that_kept_timing_out_says_so() -> None:
    tb = (
        "Traceback (most recent call last):\n"
        '  File "submitit/core/job_environment.py", line 226, in checkpoint_and_try_requeue\n'
        "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too "
        "many times.\n"
    )
    assert exit_line("FAILED", tb) == "FAILED"  # submitit's own line says nothing by itself
    cause = timeout_cause(tb, 4, 1, 30)
    assert cause is not None
    assert "timed out after 4 attempts at its 1 min time limit (signal 30 s before it)" in cause
    assert "raise time_min" in cause
    assert timeout_cause("ValueError: x", 3, 1, 30) is None
    profile = load_cluster_profile("slurm-local", time_min=1)
    warning = signal_delay_warning(profile)
    assert warning is not None and "30 s before a 1 min time limit" in warning
    assert signal_delay_warning(load_cluster_profile("slurm-local")) is None


def test_parts_that_could_not_be_cancelled_do_not_get_the_old_vectors_back(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """A refused later part whose earlier parts `scancel` failed to cancel: the old vectors
    were moved back into the outputs those parts still write into. They now stay aside, and
    the error says the parts could not be cancelled."""
    from pomlia_hpc.errors import ArrayNotWithdrawnError

    fresh = make_dataset(workspace, reg, "blood", sizes=(40, 8, 16), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    plan = plan_extraction(reg, workspace, "enc", [fresh], shards=4, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    out = workspace.path("embeddings", "enc", "blood")
    before = sorted(p.name for p in out.iterdir())
    fake_slurm.hold()
    fake_slurm.fail_next("sbatch", GRES, after=1)
    fake_slurm.fail_next("scancel", "scancel: error: Socket timed out")
    with pytest.raises(ArrayNotWithdrawnError, match="could not be cancelled"):
        extract(
            reg, workspace, "enc", [fresh], executor=_split(workspace, reg), shards=4, force=True
        )
    assert sorted(p.name for p in out.iterdir()) != before  # not put back under the parts


def test_a_later_part_the_controller_did_not_take_stays_service_unavailable(
    workspace: Workspace, reg: Registry, fake_slurm: FakeSlurm
) -> None:
    """Part 2 of a split array lost to a controller that went away: the parts before it were
    cancelled, and the error said so as a refusal (exit 2), not as a service out of reach."""
    fake_slurm.hold()
    down = "sbatch: error: Batch job submission failed: Unable to contact slurm controller"
    fake_slurm.fail_next("sbatch", down, after=1)
    with pytest.raises(ClusterError) as err:
        _split(workspace, reg).map_array(_fn, [1, 2, 3, 4, 5], name="arr")
    text = " ".join(str(err.value).split())
    assert err.value.exit_code == UNAVAILABLE_EXIT, text
    assert "the Slurm controller (slurmctld" in text and "part 2 of 3" in text, text
    assert "were cancelled (Slurm job" in text, text
