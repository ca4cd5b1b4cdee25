"""Checks of the fingerprint room that come before any work: a refused extraction removes and
submits nothing, a duplicate dataset is embedded once, fewer shards than asked are explained, an
encoder trained on other channels is warned about, `similar` with nothing to compare says so, a
first index is "built", faiss errors read without C++ locations, and a pipeline's edited
encoder section retrains under the same name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pomlia_hpc.cluster import Executor
from pomlia_hpc.data.store import find_version
from pomlia_hpc.errors import ConfigError, InputError, NotFoundError
from pomlia_hpc.fingerprint.extract import extract, finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.index import build_index, new_index
from pomlia_hpc.fingerprint.shards import run_shard
from pomlia_hpc.fingerprint.similar import fingerprint_set, nearest_images, similar_datasets
from pomlia_hpc.fingerprint.train import (
    TrainConfig,
    encoder_dir,
    register_encoder,
    train_encoder,
)
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder

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
    assert "pomlia fingerprint extract --encoder enc DATASET" in str(exc.value)
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


def test_replace_retrains_under_the_same_name(workspace: Workspace, reg: Registry) -> None:
    """A pipeline whose `encoder` section changed retrains (the docs say the stage re-runs);
    `fingerprint train` refuses, naming the setting in words, not `config.epochs`."""
    ref = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4))
    old = make_encoder(workspace, reg, "ae", latent_dim=2)
    ids = [find_version(reg, ref).id]
    cfg = {
        "encoder": {"latent_dim": 2},
        "batch_size": 16,
        "num_workers": 0,
        "max_images_per_dataset": 32,
        "objective": "mse",
        "holdout": 0.0,
    }
    register_encoder(
        reg, "ae", TrainConfig.model_validate(cfg | {"epochs": 1}), ids, [1.0], old.checkpoint_path
    )
    new = TrainConfig.model_validate(cfg | {"epochs": 2})
    ex = Executor.from_profile("local", workspace.jobs, reg)
    with pytest.raises(InputError, match="was trained with epochs 1 but this run asks for 2:"):
        train_encoder(reg, workspace, "ae", [ref], new, executor=ex)
    enc = train_encoder(reg, workspace, "ae", [ref], new, executor=ex, replace=True)
    assert enc.id == old.id and len(enc.loss_curve) == 2 and enc.config["epochs"] == 2
    assert (encoder_dir(workspace, "ae") / "encoder.pt").is_file()
    # The same file again: nothing to retrain.
    assert train_encoder(reg, workspace, "ae", [ref], new, executor=ex, replace=True).id == enc.id


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
