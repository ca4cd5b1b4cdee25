"""FAISS index: ids back to (dataset version, split, row), incremental add without rebuild,
atomic publishing, IVF/IP factories, patch indexes, exclusion of a dataset."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import faiss
import numpy as np
import pytest

from pomlia_hpc.data.store import open_version
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.files import host_field
from pomlia_hpc.fingerprint.extract import finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.index import (
    PUBLISH_LOCK,
    build_index,
    default_factory,
    load_index,
)
from pomlia_hpc.fingerprint.shards import read_embeddings, run_shard
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder


def _extract(reg: Registry, ws: Workspace, refs: list[str], patch_grid: int = 1) -> None:
    """Extraction in this process (the array-job path is tested in test_fingerprint_extract)."""
    plan = plan_extraction(reg, ws, "enc", refs, shards=2, threads=1, patch_grid=patch_grid)
    for spec in plan.specs:
        run_shard(spec)
    assert {r.status for r in finish_extraction(reg, plan)} == {"complete"}


def emb_path(workspace: Workspace, reg: Registry, ref: str) -> Path:
    store = open_version(reg, ref)
    return workspace.path("embeddings", "enc", store.name, f"{store.version}.zarr")


@pytest.fixture
def two_sets(workspace: Workspace, reg: Registry) -> list[str]:
    refs = [
        make_dataset(workspace, reg, "blood", "bloodmnist", (30, 6, 12)),
        make_dataset(workspace, reg, "organ", "organamnist", (20, 5, 9)),
    ]
    make_encoder(workspace, reg, "enc", latent_dim=4)
    _extract(reg, workspace, refs)
    return refs


def test_exact_index_maps_ids_back_to_images(
    workspace: Workspace, reg: Registry, two_sets: list[str]
) -> None:
    res = build_index(reg, workspace, "enc")
    assert (res.factory, res.ntotal, res.generation, res.rebuilt) == ("Flat", 82, 1, True)
    idx = load_index(reg, workspace, "enc")
    z = read_embeddings(emb_path(workspace, reg, two_sets[1]))
    for row in (0, 19, 20, 24, 25, 33):  # first/last of train, val, test
        dist, ids = idx.search(z[row : row + 1], 1)
        hit = idx.decode(int(ids[0, 0]), float(dist[0, 0]))
        assert (hit.ref, hit.row) == (two_sets[1], row)
        assert hit.split == ("train" if row < 20 else "val" if row < 25 else "test")
        assert hit.distance == pytest.approx(0.0, abs=1e-3)


def test_new_dataset_is_added_without_rebuilding(
    workspace: Workspace, reg: Registry, two_sets: list[str]
) -> None:
    first = build_index(reg, workspace, "enc", factory="IVF4,Flat")
    assert first.rebuilt and first.factory == "IVF4,Flat"
    # Nothing new: nothing is written.
    same = build_index(reg, workspace, "enc")
    assert (same.generation, same.added_sets, same.rebuilt) == (1, [], False)
    before = load_index(reg, workspace, "enc")
    centroids = faiss.extract_index_ivf(before.index).quantizer.reconstruct_n(0, 4)

    third = make_dataset(workspace, reg, "derma", "dermamnist", (16, 4, 4))
    _extract(reg, workspace, [third])
    res = build_index(reg, workspace, "enc")
    assert (res.generation, res.rebuilt, res.added_sets, res.ntotal) == (2, False, [third], 106)
    after = load_index(reg, workspace, "enc")
    # The trained IVF quantiser is kept: the index was extended, not retrained.
    np.testing.assert_array_equal(
        faiss.extract_index_ivf(after.index).quantizer.reconstruct_n(0, 4), centroids
    )
    root = workspace.path("indexes", "enc", "images")
    assert (root / "current").resolve().name == "gen-000002"
    # no temp leftovers (the lock file publishing builds take turns on stays, as locks do)
    assert not [p for p in root.iterdir() if p.name.startswith(".") and p.name != PUBLISH_LOCK]
    # A full rebuild on request, and when a dataset was extracted again.
    assert build_index(reg, workspace, "enc", rebuild=True).rebuilt
    assert not build_index(reg, workspace, "enc").rebuilt
    plan = plan_extraction(reg, workspace, "enc", [third], shards=1, threads=1, force=True)
    run_shard(plan.specs[0])
    finish_extraction(reg, plan)
    assert build_index(reg, workspace, "enc").rebuilt


def test_publishing_takes_a_free_generation_and_removes_killed_builds_temp(
    workspace: Workspace, reg: Registry, two_sets: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    build_index(reg, workspace, "enc")
    root = workspace.path("indexes", "enc", "images")
    host = host_field()
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid is free (and not reused within this test)
    stale = root / f".gen.{host}.{dead.pid}.tmp"
    stale.mkdir()
    (stale / "index.faiss").write_bytes(b"half")
    stale_link = root / f".current.{host}.{dead.pid}.tmp"
    stale_link.symlink_to("gen-000001")
    live = root / f".gen.{host}.{os.getppid()}.tmp"  # a running process's build
    elsewhere = root / f".gen.other-node.{dead.pid}.tmp"  # maybe running on another node
    for path in (live, elsewhere):
        path.mkdir()
    # A concurrent build published generation 1 after this one listed the folder: the first
    # pick is taken, so it must move on to the next number, leaving generation 1 as it was.
    module = importlib.import_module("pomlia_hpc.fingerprint.index")
    picks = iter([1])
    real = module.next_generation
    monkeypatch.setattr(module, "next_generation", lambda r: next(picks, None) or real(r))
    gen1 = (root / "gen-000001" / "index.faiss").read_bytes()
    res = build_index(reg, workspace, "enc", rebuild=True)
    assert res.generation == 2 and (root / "current").resolve().name == "gen-000002"
    assert load_index(reg, workspace, "enc").manifest.generation == 2
    assert json.loads((root / "gen-000001" / "manifest.json").read_text())["generation"] == 1
    assert (root / "gen-000001" / "index.faiss").read_bytes() == gen1
    assert not stale.exists() and not stale_link.is_symlink()
    assert live.is_dir() and elsewhere.is_dir()


def test_a_build_that_publishes_last_with_an_older_number_leaves_current_alone(
    workspace: Workspace, reg: Registry, two_sets: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds at once: the one that picked generation 3 published after the other had
    published generation 5, and pointed `current` back at 3."""
    build_index(reg, workspace, "enc")
    root = workspace.path("indexes", "enc", "images")
    newer = root / "gen-000005"  # what the concurrent build published meanwhile
    shutil.copytree(root / "gen-000001", newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "generation": 5}))
    (root / "current").unlink()
    (root / "current").symlink_to(newer.name)
    module = importlib.import_module("pomlia_hpc.fingerprint.index")
    monkeypatch.setattr(module, "next_generation", lambda _root: 3)  # picked before it
    res = build_index(reg, workspace, "enc", rebuild=True)
    assert res.generation == 3 and (root / "gen-000003").is_dir()
    assert (root / "current").resolve().name == "gen-000005"
    assert load_index(reg, workspace, "enc").manifest.generation == 5
    # A link to a generation that is gone is repaired by the next build, whatever its number.
    monkeypatch.undo()
    shutil.rmtree(newer)
    assert build_index(reg, workspace, "enc", rebuild=True).generation == 4
    assert (root / "current").resolve().name == "gen-000004"
    assert load_index(reg, workspace, "enc").manifest.generation == 4


def test_inner_product_metric_and_exclusion(
    workspace: Workspace, reg: Registry, two_sets: list[str]
) -> None:
    build_index(reg, workspace, "enc", metric="ip")
    idx = load_index(reg, workspace, "enc")
    blood_fs = next(s for s, e in idx.manifest.sets.items() if e.ref == two_sets[0])
    z = read_embeddings(emb_path(workspace, reg, two_sets[0]))
    dist, ids = idx.search(z[:3], 5, exclude_sets=(blood_fs,))
    hits = [idx.decode(int(i)) for i in ids.ravel()]
    assert {h.ref for h in hits} == {two_sets[1]}  # own dataset excluded
    assert ((dist >= -1e-5) & (dist <= 2 + 1e-5)).all()  # 1 - cosine
    dist_self, _ = idx.search(z[:3], 1)
    np.testing.assert_allclose(dist_self[:, 0], 0.0, atol=1e-5)


def test_patch_index(workspace: Workspace, reg: Registry) -> None:
    ref = make_dataset(workspace, reg, "blood", "bloodmnist", (10, 2, 4))
    make_encoder(workspace, reg, "enc", latent_dim=4)
    _extract(reg, workspace, [ref], patch_grid=2)
    res = build_index(reg, workspace, "enc", kind="patches")
    assert res.ntotal == 16 * 4
    idx = load_index(reg, workspace, "enc", kind="patches")
    hit = idx.decode((idx.manifest.sets[next(iter(idx.manifest.sets))].fs_id << 32) + 4 * 11 + 3)
    assert (hit.row, hit.tile, hit.split) == (11, 3, "val")
    # A data set extracted without --patch-grid refused the whole patch index: now left out.
    plain = make_dataset(workspace, reg, "organ", "organamnist", (10, 2, 4))
    _extract(reg, workspace, [plain])
    res = build_index(reg, workspace, "enc", kind="patches", rebuild=True)
    assert res.ntotal == 16 * 4
    assert [(x.ref, x.why) for x in res.left_out] == [(plain, "extracted without --patch-grid")]


def test_index_errors(workspace: Workspace, reg: Registry, two_sets: list[str]) -> None:
    with pytest.raises(InputError, match="index factory string 'IVFx' is not valid"):
        build_index(reg, workspace, "enc", factory="IVFx")
    with pytest.raises(InputError, match="needs at least that many training vectors"):
        build_index(reg, workspace, "enc", factory="IVF1024,Flat")
    with pytest.raises(NotFoundError, match="has no images index"):
        load_index(reg, workspace, "enc")
    # none extracted with --patch-grid: nothing to index, each named with its command
    with pytest.raises(NotFoundError, match=r"\(extracted without --patch-grid; run pomlia "):
        build_index(reg, workspace, "enc", kind="patches")
    make_encoder(workspace, reg, "empty")
    with pytest.raises(NotFoundError, match="encoder 'empty' has no complete embeddings"):
        build_index(reg, workspace, "empty")
    assert default_factory(1_000_000) == "Flat"
    assert default_factory(4_000_000) == "IVF8192,Flat"


@pytest.mark.parametrize("factory", ["PQ2x4", "LSH", "HNSW8"])
def test_a_factory_whose_index_cannot_leave_ids_out_is_refused_before_publishing(
    workspace: Workspace, reg: Registry, two_sets: list[str], factory: str
) -> None:
    """`index build --factory PQ2x4` (or LSH) was published, and every `similar --images` on
    it then failed inside faiss (no search parameters, so no exclusion): exit 70. An HNSW
    graph found none of the other data set's images for a query among its own, all left out."""
    with pytest.raises(InputError) as err:
        build_index(reg, workspace, "enc", factory=factory)
    said = str(err.value)
    assert said.startswith(f"index factory '{factory}' builds a "), said
    assert "expected an exact, IVF or scalar-quantised index such as 'Flat'" in said, said
    with pytest.raises(NotFoundError, match="has no images index"):
        load_index(reg, workspace, "enc")  # nothing published


def test_the_index_types_taken_leave_a_data_set_out_of_its_search(
    workspace: Workspace, reg: Registry, two_sets: list[str]
) -> None:
    query = read_embeddings(emb_path(workspace, reg, two_sets[0]))[:1]
    for fine in ("SQ8", "IVF2_HNSW8,Flat"):  # each searched with the exclusion
        build_index(reg, workspace, "enc", factory=fine, rebuild=True)
        idx = load_index(reg, workspace, "enc")
        _dist, ids = idx.search(query, 3, exclude_sets=(1,), nprobe=2)
        assert (ids >> 32 == 2).all(), (fine, ids)


def test_an_index_that_cannot_be_trained_on_so_few_vectors_is_one_line(
    workspace: Workspace, reg: Registry, two_sets: list[str]
) -> None:
    """PQ's 256 centroids per sub-vector from 82 vectors: faiss's error, exit 70."""
    with pytest.raises(InputError, match=r"^the index cannot be trained on 82 vectors \("):
        build_index(reg, workspace, "enc", factory="IVF2,PQ2")


def test_nprobe_below_one_is_refused_and_a_new_one_is_recorded_on_an_index_up_to_date(
    workspace: Workspace, reg: Registry, two_sets: list[str]
) -> None:
    """`--nprobe -5` was stored and broke every later search (exit 70); `--nprobe 64` on an
    index that was up to date was dropped without a word."""
    with pytest.raises(InputError, match=r"^nprobe -5: expected a whole number >= 1$"):
        build_index(reg, workspace, "enc", factory="IVF2,Flat", nprobe=-5)
    first = build_index(reg, workspace, "enc", factory="IVF2,Flat")
    again = build_index(reg, workspace, "enc", nprobe=2)
    assert again.nprobe_set and not again.rebuilt and again.added_sets == []
    assert again.generation == first.generation + 1
    assert load_index(reg, workspace, "enc").manifest.nprobe == 2
    same = build_index(reg, workspace, "enc", nprobe=2)
    assert not same.nprobe_set and same.generation == again.generation  # nothing written
