"""Checks of the fingerprint room that come before any work: a refused extraction removes and
submits nothing, a duplicate dataset is embedded once, fewer shards than asked are explained, an
encoder trained on other channels is warned about, `similar` with nothing to compare says so, a
first index is "built", faiss errors read without C++ locations, and a pipeline's edited
encoder section retrains under the same name."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NoReturn

import pytest

from pomlia_hpc.cluster import Executor, JobFailedError
from pomlia_hpc.config import ClusterProfile
from pomlia_hpc.data.store import find_version
from pomlia_hpc.errors import ClusterError, ConfigError, InputError, NotFoundError
from pomlia_hpc.fingerprint.candidates import fingerprint_set
from pomlia_hpc.fingerprint.extract import extract, finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.index import build_index, new_index
from pomlia_hpc.fingerprint.nearest import nearest_images
from pomlia_hpc.fingerprint.shards import run_shard
from pomlia_hpc.fingerprint.similar import similar_datasets
from pomlia_hpc.fingerprint.train import (
    TrainConfig,
    encoder_dir,
    get_encoder,
    load_encoder,
    register_encoder,
    train_encoder,
)
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder, tiny_encoder_config

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def _embed(reg: Registry, ws: Workspace, refs: list[str], **kw: object) -> None:
    plan = plan_extraction(reg, ws, "enc", refs, threads=1, **kw)  # type: ignore[arg-type]
    for spec in plan.specs:
        run_shard(spec)
    assert {r.status for r in finish_extraction(reg, plan)} == {"complete"}


def test_a_refused_forced_extraction_keeps_the_finished_vectors(
    workspace: Workspace, reg: Registry
) -> None:
    """`--cluster nosuch fingerprint extract --force` removed the finished embeddings, then
    failed on the profile; `similar` then said "extraction running"."""
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8))
    make_encoder(workspace, reg, "enc")
    _embed(reg, workspace, [ref])
    fs, _ = fingerprint_set(reg, "enc", ref)
    before = sorted(p.name for p in Path(fs.embeddings_path).rglob("*"))
    nosuch = dataclasses.replace(workspace, cluster_profile="nosuch")
    with pytest.raises(ConfigError, match="cluster profile 'nosuch' not found"):
        extract(reg, nosuch, "enc", [ref], force=True)
    with pytest.raises(ConfigError, match="unknown resource key"):
        extract(reg, workspace, "enc", [ref], force=True, resources={"gpu": 1})
    with pytest.raises(InputError, match=r"--patch-grid 50 for 'blood@\w+' \(28x28 px images\)"):
        extract(reg, workspace, "enc", [ref], force=True, patch_grid=50)
    fs, _ = fingerprint_set(reg, "enc", ref)  # still complete, same files
    assert fs.status == "complete"
    assert sorted(p.name for p in Path(fs.embeddings_path).rglob("*")) == before


def test_patch_grid_is_checked_before_anything_is_written(
    workspace: Workspace, reg: Registry
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8))
    make_encoder(workspace, reg, "enc")
    for grid, most in ((50, 7), (0, 7)):
        with pytest.raises(InputError, match=rf"expected an integer from 1 .* to {most} "):
            plan_extraction(reg, workspace, "enc", [ref], patch_grid=grid)
    assert list(workspace.path("embeddings").rglob("*")) == []
    with pytest.raises(InputError, match="--shards 2 and --shard-rows 9: expected at most one"):
        plan_extraction(reg, workspace, "enc", [ref], shards=2, shard_rows=9)


def test_duplicates_are_embedded_once_and_fewer_shards_are_explained(
    workspace: Workspace, reg: Registry
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8), chunk_rows=16)  # 2 chunks
    make_encoder(workspace, reg, "enc")
    plan = plan_extraction(reg, workspace, "enc", [ref, "blood", ref], shards=5, threads=1)
    assert [d.ref for d in plan.datasets] == [ref]
    (ds,) = plan.datasets
    assert len(ds.shards) == 2
    assert ds.note == (
        "2 shard(s), not 5: a shard holds whole chunks of the store, and its 32 images are "
        "2 chunk(s) of 16 rows"
    )
    for spec in plan.specs:
        run_shard(spec)
    (res,) = finish_extraction(reg, plan)
    assert res.note == ds.note
    # As asked: no note.
    again = plan_extraction(reg, workspace, "enc", [ref], shards=2, threads=1)
    assert again.datasets[0].note == ""


def test_an_encoder_trained_on_gray_images_warns_about_colour_data(
    workspace: Workspace, reg: Registry
) -> None:
    gray = make_dataset(workspace, reg, "pneu", "pneumoniamnist", (20, 4, 8))
    rgb = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8))
    enc = make_encoder(workspace, reg, "enc")
    gray_id = find_version(reg, gray).id
    register_encoder(
        reg, "enc", TrainConfig.model_validate(enc.config), [gray_id], [], enc.checkpoint_path
    )
    plan = plan_extraction(reg, workspace, "enc", [gray, rgb, "blood"], threads=1)
    (line,) = plan.warnings
    assert line.startswith(f"encoder 'enc' was trained on gray images only, and {rgb} is colour")
    assert "three channels as they are" in line and gray not in line
    assert plan_extraction(reg, workspace, "enc", [gray], threads=1).warnings == []
    seen: list[str] = []
    ex = Executor.from_profile("debug", workspace.jobs, reg)
    extract(reg, workspace, "enc", [rgb], executor=ex, threads=1, say=seen.append)
    assert seen == plan.warnings


def test_similar_with_nothing_to_compare_says_so(workspace: Workspace, reg: Registry) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8))
    make_encoder(workspace, reg, "enc")
    _embed(reg, workspace, [ref])
    with pytest.raises(NotFoundError, match=r"nothing to compare 'blood@\w+' with") as exc:
        similar_datasets(reg, "enc", ref)
    assert "pomlia fingerprint extract DATASET -e enc" in str(exc.value)
    first = build_index(reg, workspace, "enc")
    assert first.first and first.rebuilt
    with pytest.raises(NotFoundError, match="holds no other dataset's images"):
        nearest_images(reg, workspace, "enc", ref, 3)
    with pytest.raises(InputError, match="--images 0: expected a number of images >= 1"):
        nearest_images(reg, workspace, "enc", ref, 0)
    with pytest.raises(InputError, match="--k 0: expected a number of datasets >= 1"):
        similar_datasets(reg, "enc", ref, k=0)
    again = build_index(reg, workspace, "enc", rebuild=True)
    assert again.rebuilt and not again.first


def test_a_bad_factory_string_names_no_cpp_source() -> None:
    with pytest.raises(InputError) as exc:
        new_index(16, "IVF4,PQ3", "l2")
    text = str(exc.value)
    assert "multiple of the number of subquantizers" in text
    assert ".cpp" not in text and "faiss::" not in text and "Error in" not in text


def _small(epochs: int) -> TrainConfig:
    """:func:`tiny_encoder_config` with one step of 8 images an epoch (each step of 16 images
    cost about a second of CPU more): what happens around the trainings is under test."""
    return tiny_encoder_config(epochs).model_copy(
        update={"batch_size": 8, "max_images_per_dataset": 8}
    )


def test_replace_retrains_under_the_same_name(workspace: Workspace, reg: Registry) -> None:
    """A pipeline whose `encoder` section changed retrains the encoder it trained (the docs say
    the stage re-runs); `fingerprint train` refuses, naming the setting in words."""
    ref = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4))
    ex = Executor.from_profile("debug", workspace.jobs, reg)  # the trainings in this process
    old = train_encoder(reg, workspace, "ae", [ref], _small(1), executor=ex, pipeline="p")
    with pytest.raises(InputError, match="was trained with epochs 1 but this run asks for 2:"):
        train_encoder(reg, workspace, "ae", [ref], _small(2), executor=ex)
    enc = train_encoder(reg, workspace, "ae", [ref], _small(2), executor=ex, pipeline="p")
    assert enc.id == old.id and len(enc.loss_curve) == 2 and enc.config["epochs"] == 2
    assert enc.checkpoint_path == old.checkpoint_path
    assert load_encoder(reg, "ae")[1].latent_dim == 2
    # The staging folder was swapped in: only the encoder's folder is left (and the lock that
    # keeps a second training of the name out, a file that stays by design).
    left = encoder_dir(workspace, "ae").parent.iterdir()
    assert [p.name for p in left if not p.name.endswith(".lock")] == ["ae"]
    # The same file again: nothing to retrain. Another pipeline may not replace it.
    assert (
        train_encoder(reg, workspace, "ae", [ref], _small(2), executor=ex, pipeline="p").id
        == enc.id
    )
    with pytest.raises(InputError, match="was trained by pipeline 'p' with epochs 2 but pipeline"):
        train_encoder(reg, workspace, "ae", [ref], _small(3), executor=ex, pipeline="q")


def test_a_pipeline_does_not_replace_an_encoder_it_did_not_train(
    workspace: Workspace, reg: Registry
) -> None:
    """Replace never asked who made the encoder: a pipeline whose encoder.name matched one
    trained by `fingerprint train` with other settings deleted it."""
    ref = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4))
    old = make_encoder(workspace, reg, "ae", latent_dim=2)
    ids = [find_version(reg, ref).id]
    register_encoder(reg, "ae", _small(1), ids, [1.0], old.checkpoint_path)
    before = Path(old.checkpoint_path).read_bytes()
    with pytest.raises(InputError) as exc:
        train_encoder(reg, workspace, "ae", [ref], _small(2), pipeline="p")
    assert str(exc.value).startswith(
        "encoder 'ae' was trained outside pipeline 'p' with epochs 1 but pipeline 'p' asks "
        "for 2: a pipeline retrains only an encoder its own encoder stage trained"
    )
    assert exc.value.hint == "choose another encoder.name in pipeline 'p'"
    assert Path(old.checkpoint_path).read_bytes() == before
    assert get_encoder(reg, "ae").config["epochs"] == 1


def test_a_finished_encoder_needs_no_cluster_profile(workspace: Workspace, reg: Registry) -> None:
    """The executor was built before the "already trained" check: re-running `fingerprint train
    -n NAME` of a finished encoder failed on a broken cluster profile, though no job runs."""
    ref = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4))
    old = make_encoder(workspace, reg, "ae", latent_dim=2)
    register_encoder(reg, "ae", _small(1), [find_version(reg, ref).id], [1.0], old.checkpoint_path)
    nosuch = dataclasses.replace(workspace, cluster_profile="nosuch")
    assert train_encoder(reg, nosuch, "ae", [ref], _small(1)).id == old.id
    with pytest.raises(ConfigError, match="cluster profile 'nosuch' not found"):
        train_encoder(reg, nosuch, "other", [ref], _small(1))  # a job is needed


def test_a_gpu_missing_here_is_refused_before_the_job(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fingerprint train ... --gpus 1` (and `extract --gpus 1`) on the local profile of a
    machine without a GPU trained on the CPU without a word; now nothing is started."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    ref = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4))
    with pytest.raises(InputError, match=r"--gpus 1: 1 GPU.* torch sees 0 on this machine"):
        train_encoder(reg, workspace, "ae", [ref], _small(1), resources={"gpus_per_node": 1})
    assert not encoder_dir(workspace, "ae").exists()
    make_encoder(workspace, reg, "enc")
    with pytest.raises(InputError, match=r"--gpus 1: .*ask for no GPU \(--gpus 0\)"):
        extract(reg, workspace, "enc", [ref], resources={"gpus_per_node": 1})
    assert list(workspace.path("embeddings").rglob("*")) == []


def test_a_gpu_missing_here_is_no_reason_to_refuse_when_nothing_runs(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`extract --gpus 1` on a CPU-only local machine was refused even when every embedding
    was complete and nothing would run; a dataset still to embed (or --force) is refused,
    before anything is written."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8))
    other = make_dataset(workspace, reg, "derma", sizes=(20, 4, 8))
    make_encoder(workspace, reg, "enc")
    _embed(reg, workspace, [ref])
    gpu = {"gpus_per_node": 1}
    (res,) = extract(reg, workspace, "enc", [ref], resources=gpu)
    assert res.status == "complete"
    before = sorted(p.name for p in workspace.path("embeddings").rglob("*"))
    for refs, force in (([ref, other], False), ([ref], True)):
        with pytest.raises(InputError, match=r"--gpus 1: .*ask for no GPU \(--gpus 0\)"):
            extract(reg, workspace, "enc", refs, resources=gpu, force=force)
        assert sorted(p.name for p in workspace.path("embeddings").rglob("*")) == before
    assert fingerprint_set(reg, "enc", ref)[0].status == "complete"


class _Cancelled:
    """The handle of a job cancelled (scancel, preemption without requeue) before its end."""

    record_id = None
    backend = "debug"  # no job folder or log to name

    def done(self) -> bool:
        return True

    def result(self) -> NoReturn:
        raise JobFailedError("job 7 was cancelled", state="CANCELLED", traceback=None)


class _Stub(Executor):
    """An executor whose submission is refused (sbatch, the controller down) or whose job is
    cancelled; it remembers the folder the job was to train in."""

    def __init__(self, refuse: bool) -> None:  # no backend: nothing runs
        self.profile = ClusterProfile()  # the local default: asks for no GPU
        self.refuse = refuse
        self.folders: list[str] = []

    def submit(self, fn: Any, *args: object, **kwargs: object) -> Any:
        if self.refuse:
            raise ClusterError("sbatch: error: Batch job submission failed")
        self.folders.append(fn.out_dir)
        return _Cancelled()


def test_a_failed_retrain_keeps_the_old_encoder(workspace: Workspace, reg: Registry) -> None:
    """The retrain removed the old encoder's folder before its job was submitted: a refused
    submission or a cancelled job left the registry naming a checkpoint that no longer
    existed."""
    ref = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4))
    here = Executor.from_profile("debug", workspace.jobs, reg)  # the trainings in this process
    old = train_encoder(reg, workspace, "ae", [ref], _small(1), executor=here, pipeline="p")
    weights = Path(old.checkpoint_path).read_bytes()
    with pytest.raises(ClusterError, match="submission failed"):
        train_encoder(reg, workspace, "ae", [ref], _small(2), executor=_Stub(True), pipeline="p")
    assert Path(old.checkpoint_path).read_bytes() == weights  # untouched, still registered
    cancelling = _Stub(False)
    with pytest.raises(JobFailedError, match="cancelled"):
        train_encoder(reg, workspace, "ae", [ref], _small(2), executor=cancelling, pipeline="p")
    (staged,) = cancelling.folders
    assert Path(staged) != encoder_dir(workspace, "ae")  # beside it, not in it
    for _ in range(2):  # as it was, and after a retrain that now succeeds
        enc = get_encoder(reg, "ae")
        assert Path(enc.checkpoint_path).is_file()
        assert load_encoder(reg, "ae")[1].latent_dim == 2
        if enc.config["epochs"] == 1:
            assert Path(enc.checkpoint_path).read_bytes() == weights
            train_encoder(reg, workspace, "ae", [ref], _small(2), executor=here, pipeline="p")
    assert get_encoder(reg, "ae").config["epochs"] == 2
    assert not Path(staged).exists()


def test_a_removed_training_store_is_no_reason_to_fail(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """The channel warning opened the store of every dataset the encoder was trained on: one
    moved away made `fingerprint extract` fail on a mere warning."""
    gray = make_dataset(workspace, reg, "pneu", "pneumoniamnist", (20, 4, 8))
    rgb = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8))
    enc = make_encoder(workspace, reg, "enc")
    row = find_version(reg, gray)
    register_encoder(
        reg, "enc", TrainConfig.model_validate(enc.config), [row.id], [], enc.checkpoint_path
    )
    Path(row.store_path).rename(tmp_path / "moved")
    plan = plan_extraction(reg, workspace, "enc", [rgb], threads=1)
    assert plan.warnings == []  # nothing known to compare with: no warning, no failure
    assert [d.ref for d in plan.datasets] == [rgb]


def test_a_kept_unfinished_plan_is_called_the_existing_plan(
    workspace: Workspace, reg: Registry
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8), chunk_rows=8)  # 4 chunks
    make_encoder(workspace, reg, "enc")
    plan_extraction(reg, workspace, "enc", [ref], shards=2, threads=1)  # interrupted: not run
    (ds,) = plan_extraction(reg, workspace, "enc", [ref], shards=1, threads=1).datasets
    assert ds.note == "2 shard(s), not 1: the existing plan was kept (--force plans again)"


def test_the_held_out_rows_are_counted_in_one_place() -> None:
    """The pipeline kept its own copy of the hold-out rule and of the trainer's row range;
    both count with `fingerprint.rows` now, which `split_holdout` uses too."""
    from pomlia_hpc.fingerprint.loader import Source
    from pomlia_hpc.fingerprint.rows import held_out
    from pomlia_hpc.fingerprint.validation import split_holdout

    for n, fraction in ((1, 0.1), (2, 0.1), (9, 0.1), (36, 0.25), (40, 0.0)):
        train, val = split_holdout([Source("s", 3, 3 + n)], fraction)
        assert sum(s.stop - s.start for s in val) == held_out(n, fraction)
        assert train[0].stop - train[0].start == n - held_out(n, fraction)
