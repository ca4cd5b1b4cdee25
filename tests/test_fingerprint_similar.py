"""Dataset distances, similar datasets, nearest images of other datasets, latent plots."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from sqlalchemy import select

from pomlia_hpc.cli import app
from pomlia_hpc.data.store import current_versions, find_version, open_version
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.fingerprint.distances import (
    DISTANCES,
    get_distance,
    intensity_baseline,
    intensity_histogram,
)
from pomlia_hpc.fingerprint.extract import finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.index import LoadedIndex, build_index
from pomlia_hpc.fingerprint.nearest import nearest_images
from pomlia_hpc.fingerprint.plots import plot_encoder_latent
from pomlia_hpc.fingerprint.ranking import DISTANCE_NAMES
from pomlia_hpc.fingerprint.refresh import plan_refresh
from pomlia_hpc.fingerprint.sample import embedding_sample, sample_rows
from pomlia_hpc.fingerprint.shards import run_shard
from pomlia_hpc.fingerprint.similar import dataset_fingerprint, similar_datasets
from pomlia_hpc.fingerprint.summary import summary_path
from pomlia_hpc.fingerprint.usable import LeftOut
from pomlia_hpc.registry import Dataset, FingerprintSet, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, runner
from tests.fixtures.factories import make_dataset, make_encoder
from tests.fixtures.registries import new_workspace


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_distance_properties(name: str) -> None:
    fn = get_distance(name)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    a2 = rng.normal(size=(300, 6))  # same distribution, other sample
    near = rng.normal(size=(300, 6)) + 0.3
    far = rng.normal(size=(300, 6)) * 2.0 + 2.0
    assert fn(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fn(a, far) == pytest.approx(fn(far, a), rel=1e-6)  # symmetric
    assert fn(a, a2) < fn(a, near) < fn(a, far)
    with pytest.raises(InputError, match="same d"):
        fn(a, np.zeros((3, 5)))


def test_unknown_distance_and_baseline() -> None:
    with pytest.raises(InputError, match="distance 'cosine' is not known: expected one of"):
        get_distance("cosine")
    dark, bright = np.zeros((4, 8, 8), np.uint8), np.full((4, 8, 8), 250, np.uint8)
    h_dark, h_bright = intensity_histogram(dark), intensity_histogram(bright)
    assert h_dark.sum() == pytest.approx(1.0) and h_dark[0] == 1.0 and h_bright[-1] == 1.0
    assert intensity_baseline(1, h_dark, 1, h_dark) == 0.0
    assert intensity_baseline(1, h_dark, 1, h_bright) == 2.0
    assert intensity_baseline(1, h_dark, 3, h_dark) == float("inf")


def _build_world(workspace: Workspace) -> tuple[Registry, list[str]]:
    """Two look-alike samples of bloodmnist (different seeds) and one of organamnist and
    dermamnist, extracted with a seeded untrained encoder."""
    reg = Registry.open(workspace.db_url)
    refs = [
        make_dataset(workspace, reg, "blood_a", "bloodmnist", (60, 8, 30), seed=0),
        make_dataset(workspace, reg, "blood_b", "bloodmnist", (60, 8, 30), seed=1),
        make_dataset(workspace, reg, "organ", "organamnist", (60, 8, 30), seed=0),
        make_dataset(workspace, reg, "derma", "dermamnist", (60, 8, 30), seed=0),
    ]
    make_encoder(workspace, reg, "enc", latent_dim=8)
    plan = plan_extraction(reg, workspace, "enc", refs, shards=1, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    return reg, refs


def _copy_world(built: Path, home: Path) -> None:
    """Copy the workspace folder ``built`` (a built world, its registry closed) onto ``home``,
    and point the paths its registry records (absolute: stores, embeddings, checkpoints) from
    ``built`` to ``home``."""
    shutil.copytree(built, home, dirs_exist_ok=True)
    old, new = str(built), str(home)
    with closing(sqlite3.connect(home / "registry.db")) as db, db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in [c[1] for c in db.execute(f'PRAGMA table_info("{table}")')]:
                db.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                    (old, new, old),
                )


@pytest.fixture(scope="module")
def built_world(
    tmp_path_factory: pytest.TempPathFactory, sqlite_registry_template: Path
) -> tuple[Path, list[str]]:
    """:func:`_build_world` once for this file (~3 s of CPU a build), never changed: its
    workspace folder and refs, which each test gets a copy of."""
    home = tmp_path_factory.mktemp("similar-world") / "home"
    reg, refs = _build_world(new_workspace(home, sqlite_registry_template))
    reg.dispose()
    return home, refs


@pytest.fixture
def world(
    workspace: Workspace, built_world: tuple[Path, list[str]]
) -> Iterator[tuple[Registry, list[str]]]:
    """:func:`_build_world`'s world in the test's own workspace (a copy), which the test may
    change."""
    built, refs = built_world
    _copy_world(built, workspace.home)
    reg = Registry.open(workspace.db_url)
    yield reg, refs
    reg.dispose()


@pytest.fixture(scope="module")
def read_only_world(
    tmp_path_factory: pytest.TempPathFactory, built_world: tuple[Path, list[str]]
) -> Iterator[tuple[Registry, list[str]]]:
    """A copy of :func:`_build_world`'s world for this file's tests that only read it."""
    built, refs = built_world
    home = tmp_path_factory.mktemp("similar-world-read") / "home"
    _copy_world(built, home)
    reg = Registry.open(f"sqlite:///{home / 'registry.db'}")
    yield reg, refs
    reg.dispose()


@pytest.mark.parametrize("distance", DISTANCE_NAMES)
def test_similar_datasets_finds_the_sibling(
    read_only_world: tuple[Registry, list[str]], distance: str
) -> None:
    reg, refs = read_only_world
    found = similar_datasets(reg, "enc", "blood_a", k=5, distance=distance)
    assert found[0].ref == refs[1]
    assert len(found) == 3 and all(r.n_vectors == 98 for r in found)
    assert [r.distance for r in found] == sorted(r.distance for r in found)
    assert [r.ref for r in similar_datasets(reg, "enc", "blood_a", k=1, distance=distance)] == [
        refs[1]
    ]


def test_mean_distance_uses_the_exact_stored_means(
    read_only_world: tuple[Registry, list[str]],
) -> None:
    reg, refs = read_only_world
    mean = {r: np.asarray(dataset_fingerprint(reg, "enc", r)["mean"]) for r in refs}
    # A 3-vector sample's mean is far from the mean of all 98: the result must not use it.
    found = similar_datasets(reg, "enc", "blood_a", k=5, distance="mean")
    for r in found:
        assert r.distance == pytest.approx(np.linalg.norm(mean[refs[0]] - mean[r.ref]), rel=1e-9)


def test_similar_reads_summaries_not_embeddings(world: tuple[Registry, list[str]]) -> None:
    reg, refs = world
    with reg.session() as s:
        paths = [fs.embeddings_path for fs in s.query(FingerprintSet)]
    assert all(summary_path(p).is_file() for p in paths)
    before = similar_datasets(reg, "enc", "blood_a", k=3)  # default: combined
    assert before[0].ref == refs[1]
    assert {"trimmed", "explicit", "trimmed_scaled", "explicit_scaled"} <= set(before[0].components)
    # Without the vectors (the "z" arrays gone) the ranking is the same: only summaries are read.
    for p in paths:
        for f in Path(p, "z").rglob("*"):
            if f.is_file():
                f.unlink()
    assert similar_datasets(reg, "enc", "blood_a", k=3) == before


def test_missing_summary_is_computed_on_use_and_stored_by_the_extraction(
    world: tuple[Registry, list[str]], workspace: Workspace
) -> None:
    """A set extracted before summaries existed: a reader (`similar`) computes its summary in
    memory and writes nothing (it wrote summary.npz); `fingerprint extract` stores it."""
    reg, refs = world
    with reg.session() as s:
        paths = [fs.embeddings_path for fs in s.query(FingerprintSet)]
    before = similar_datasets(reg, "enc", "blood_a", k=3, distance="frechet")
    for p in paths:
        summary_path(p).unlink()
    after = similar_datasets(reg, "enc", "blood_a", k=3, distance="frechet")
    assert [r.ref for r in after] == [r.ref for r in before]
    assert [r.distance for r in after] == pytest.approx([r.distance for r in before])
    assert not any(summary_path(p).exists() for p in paths)  # readers write nothing
    plan = plan_extraction(reg, workspace, "enc", refs, shards=1, threads=1)
    assert not plan.specs  # complete: nothing to run, ...
    finish_extraction(reg, plan)
    assert all(summary_path(p).is_file() for p in paths)  # ... and the summaries stored


def test_sample_of_class_sorted_rows_covers_every_class(tmp_path: Path) -> None:
    # Rows sorted by class (as many HDF5 files store them), chunks larger than the sample:
    # a sample read from a few whole chunks would see only the first and last classes.
    n_classes, per_class, chunk = 10, 640, 64
    cls = np.repeat(np.arange(n_classes), per_class).astype(np.float32)
    g = zarr.open_group(str(tmp_path / "emb.zarr"), mode="w")
    z = g.create_array("z", shape=(len(cls), 2), chunks=(chunk, 2), dtype="float32")
    z[:] = np.stack([cls, cls], 1)
    x = sample_rows(str(tmp_path / "emb.zarr"), 0, len(cls), 20)
    counts = np.bincount(x[:, 0].astype(int), minlength=n_classes)
    assert len(x) == 20 and counts.min() >= 1 and counts.max() <= 3
    # The same within a sub-range (one split): only its own classes, all of them.
    x = sample_rows(str(tmp_path / "emb.zarr"), 2 * per_class, 7 * per_class, 10)
    assert sorted(set(x[:, 0].astype(int))) == [2, 3, 4, 5, 6]


def test_nearest_images_come_from_other_datasets(
    workspace: Workspace, world: tuple[Registry, list[str]]
) -> None:
    reg, refs = world
    with pytest.raises(NotFoundError, match="no images index"):
        nearest_images(reg, workspace, "enc", "blood_a", 10)
    build_index(reg, workspace, "enc")
    hits = nearest_images(reg, workspace, "enc", "blood_a", 50, split="train")
    assert len(hits) == 50
    assert len({(h.ref, h.row) for h in hits}) == 50  # distinct images
    assert all(h.ref != refs[0] for h in hits)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    # Most of the nearest images are the sibling's; each hit is a readable image.
    assert sum(h.ref == refs[1] for h in hits) >= 40
    h = hits[0]
    store = open_version(reg, h.ref)
    lo, hi = store.split_range(h.split)
    assert lo <= h.row < hi and store.read_rows(h.row, h.row + 1).shape == (1, 28, 28, 3)
    # More than the other datasets hold: all of them, no more.
    assert len(nearest_images(reg, workspace, "enc", "blood_a", 10_000)) == 3 * 98


def test_the_first_images_of_a_longer_answer_are_the_shorter_answer(
    workspace: Workspace, world: tuple[Registry, list[str]]
) -> None:
    """Each query image asked the index for its k nearest vectors, k from the number of
    images wanted, and stopped once it had that many: an image beyond some query's k was
    missed or got the distance of a farther query. `--images 5` then ended with an image at
    4.2 that `--images 100` listed 5th at 3.0. The answer is now the brute-force one, and
    the first m images of any longer answer."""
    reg, refs = world
    build_index(reg, workspace, "enc")
    queries = embedding_sample(reg, "enc", "blood_a", 10_000, split="val")
    truth = []
    for ref in refs[1:]:
        z = embedding_sample(reg, "enc", ref, 10_000)
        d = np.sqrt(((z[:, None, :] - queries[None, :, :]) ** 2).sum(-1)).min(axis=1)
        truth.extend(sorted(d.tolist()))
    long = nearest_images(reg, workspace, "enc", "blood_a", 60, split="val")
    np.testing.assert_allclose([h.distance for h in long], sorted(truth)[:60], rtol=1e-5)
    for n in (1, 3, 10):
        got = nearest_images(reg, workspace, "enc", "blood_a", n, split="val")
        assert [(h.ref, h.row, h.distance) for h in got] == [
            (h.ref, h.row, h.distance) for h in long[:n]
        ]


def test_fingerprint_and_plots(workspace: Workspace, world: tuple[Registry, list[str]]) -> None:
    reg, refs = world
    fp = dataset_fingerprint(reg, "enc", "organ")
    assert fp["dataset"] == refs[2] and fp["n_vectors"] == 98 and len(fp["mean"]) == 8
    assert fp["explicit"]["channels"] == 1  # organamnist is gray
    np.testing.assert_allclose(
        fp["mean"], embedding_sample(reg, "enc", "organ", 10_000).mean(0), rtol=1e-5
    )
    assert embedding_sample(reg, "enc", "organ", 10, split="test").shape == (10, 8)
    out = workspace.path("reports", "latent")
    scatter, means = plot_encoder_latent(reg, "enc", None, out)
    for p in (scatter, means):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_plot_latent_of_one_dataset_skips_the_means_figure(
    workspace: Workspace, world: tuple[Registry, list[str]], wide_console: None
) -> None:
    """`plot latent` of a single data set drew the PCA of one mean: one point on axes of
    rounding noise (overlapping ±0.0008 ticks). It writes the scatter only, and says why."""
    out = workspace.path("reports", "one")
    text = " ".join(cli_ok("plot", "latent", "derma", "-e", "enc", "--out", str(out)).split())
    assert (out / "latent_scatter.png").is_file() and not (out / "latent_means.png").exists()
    assert "latent_means.png not written: the mean embeddings need 2 data sets" in text


def test_similar_errors(workspace: Workspace) -> None:
    reg = Registry.open(workspace.db_url)
    ref = make_dataset(workspace, reg, "blood", sizes=(10, 2, 2))
    make_encoder(workspace, reg, "enc")
    with pytest.raises(NotFoundError, match=r"no embeddings under encoder 'enc' \(not extracted"):
        similar_datasets(reg, "enc", ref)
    with pytest.raises(InputError, match="--k 0"):
        similar_datasets(reg, "enc", ref, k=0)
    with pytest.raises(InputError, match="distance 'cosine' is not known"):
        similar_datasets(reg, "enc", ref, distance="cosine")


def test_only_the_newest_version_of_each_dataset_by_default(
    workspace: Workspace, world: tuple[Registry, list[str]], wide_console: None
) -> None:
    """A second version of 'organ' (harvested data, say) with embeddings: similar datasets,
    nearest images and the latent plot take each dataset once, its newest version, and say
    what they left out; --all-versions takes them all."""
    reg, refs = world
    new = make_dataset(workspace, reg, "organ", "organamnist", (60, 8, 30), seed=5)
    assert new != refs[2]
    plan = plan_extraction(reg, workspace, "enc", [new], shards=1, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    build_index(reg, workspace, "enc")
    found = [r.ref for r in similar_datasets(reg, "enc", "derma", k=10)]
    assert sorted(found) == sorted([refs[0], refs[1], new])
    every = [r.ref for r in similar_datasets(reg, "enc", "derma", k=10, all_versions=True)]
    assert sorted(every) == sorted([refs[0], refs[1], refs[2], new])
    hits = nearest_images(reg, workspace, "enc", "derma", 10_000, split="test")
    assert {h.ref for h in hits} == {refs[0], refs[1], new}
    assert len(hits) == 3 * 98  # each image once: not once per version of 'organ'
    hits = nearest_images(reg, workspace, "enc", "derma", 10_000, all_versions=True)
    assert {h.ref for h in hits} == {refs[0], refs[1], refs[2], new}
    text = " ".join(cli_ok("similar", "derma", "-e", "enc").split())
    assert refs[2] not in text.split("other versions left out")[0] and new in text
    assert f"other versions left out: {refs[2]}" in text and "--all-versions" in text
    text = " ".join(cli_ok("similar", "derma", "-e", "enc", "--all-versions").split())
    assert refs[2] in text and "left out" not in text
    text = " ".join(cli_ok("plot", "latent", "-e", "enc", "--out", str(workspace.home)).split())
    assert f"other versions left out: {refs[2]}" in text


def test_the_version_the_name_means_is_preferred_over_the_highest_id(
    workspace: Workspace, world: tuple[Registry, list[str]], wide_console: None
) -> None:
    """When an older version of 'organ' is current again (re-added identical content), the
    plain name means it: similar datasets, nearest images and the refresh take it, not the
    newer (higher id) version, as ``find_version`` does. The note naming the version left out
    called that newer one "older" ("the newest version of each dataset only")."""
    reg, refs = world
    new = make_dataset(workspace, reg, "organ", "organamnist", (60, 8, 30), seed=5)
    plan = plan_extraction(reg, workspace, "enc", [new], shards=1, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    build_index(reg, workspace, "enc")
    old = find_version(reg, refs[2])
    with reg.session() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == "organ"))
        assert ds is not None
        ds.current_version_id = old.id
    assert find_version(reg, "organ").id == old.id
    assert current_versions(reg)["organ"].id == old.id
    found = [r.ref for r in similar_datasets(reg, "enc", "derma", k=10)]
    assert sorted(found) == sorted([refs[0], refs[1], refs[2]])
    hits = nearest_images(reg, workspace, "enc", "derma", 10_000, split="test")
    assert {h.ref for h in hits} == {refs[0], refs[1], refs[2]}
    datasets = plan_refresh(reg, workspace, "enc").datasets
    assert refs[2] in datasets and new not in datasets
    text = " ".join(cli_ok("similar", "derma", "-e", "enc").split())
    assert f"other versions left out: {new} (the current version of each dataset only;" in text
    assert "older" not in text and "newest" not in text


def test_a_current_version_never_extracted_is_named_not_compared_silently(
    workspace: Workspace, world: tuple[Registry, list[str]], wide_console: None
) -> None:
    """'organ' gets a new version after its extraction, and that version is never embedded:
    similar datasets, nearest images and the latent plot compare its old version, as the
    docs say, and now name the new one as left out with the command that embeds it (they
    said nothing: a user took the old data for the current)."""
    reg, refs = world
    build_index(reg, workspace, "enc")
    new = make_dataset(workspace, reg, "organ", "organamnist", (60, 8, 30), seed=5)
    assert find_version(reg, "organ").id == find_version(reg, new).id
    left: list[LeftOut] = []
    found = [r.ref for r in similar_datasets(reg, "enc", "derma", k=10, left_out=left)]
    assert sorted(found) == sorted(refs[:3])  # the old version, as before
    assert [str(x) for x in left] == [
        f"{new} (current version not extracted; {refs[2]} compared instead; "
        "run pomlia fingerprint extract organ -e enc)"
    ]
    note = f"left out: {new} (current version not extracted; {refs[2]} compared instead"
    for args in ([], ["--images", "3"], ["--json"]):
        assert note in " ".join(cli_ok("similar", "derma", "-e", "enc", *args).split()), args
    text = " ".join(cli_ok("plot", "latent", "-e", "enc", "--out", str(workspace.home)).split())
    assert note in text
    # Its own query names no such note for its own dataset, and once it is extracted, none.
    assert "not extracted" not in cli_ok("similar", refs[2], "-e", "enc")
    plan = plan_extraction(reg, workspace, "enc", [new], shards=1, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    assert "not extracted" not in cli_ok("similar", "derma", "-e", "enc")


def test_nearest_images_of_an_empty_split_are_refused(
    workspace: Workspace, world: tuple[Registry, list[str]]
) -> None:
    """A query whose chosen split holds no images: one error naming the splits that do (it
    printed an empty table, exit 0, as if no image were near)."""
    reg, _refs = world
    ref = make_dataset(workspace, reg, "notest", "bloodmnist", (20, 5, 0), seed=3)
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=1, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    build_index(reg, workspace, "enc")
    said = (
        f"--split test: '{ref}' has no test images to query with; expected a split that holds "
        "images: train (20), val (5)"
    )
    with pytest.raises(InputError) as err:
        nearest_images(reg, workspace, "enc", "notest", 3, split="test")
    assert str(err.value) == said
    assert len(nearest_images(reg, workspace, "enc", "notest", 3, split="val")) == 3
    res = runner.invoke(app, ["similar", "notest", "-e", "enc", "--images", "3", "--split", "test"])
    assert isinstance(res.exception, InputError) and res.exception.exit_code == 2


def test_an_exact_index_is_scanned_at_most_twice(
    workspace: Workspace, world: tuple[Registry, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Flat index scans every vector whatever k: `similar --images` widens k from 64 by 16
    there, where widening from 4 by 4 scanned it again each time (1 to 5 scans, 45 CPU-s over
    708,072 vectors for --images 1000: docs/BENCHMARKS.md). The answer is the same."""
    reg, _refs = world
    build_index(reg, workspace, "enc")
    ks: list[int] = []
    real = LoadedIndex.search

    def counted(self: LoadedIndex, queries: np.ndarray, k: int, **kw: Any) -> Any:
        ks.append(k)
        return real(self, queries, k, **kw)

    monkeypatch.setattr(LoadedIndex, "search", counted)
    hits = nearest_images(reg, workspace, "enc", "blood_a", 250)
    assert ks == [64, 294]  # was [6, 24, 96, 294]; 294: every image of the other three
    assert len(hits) == 250 and [h.distance for h in hits] == sorted(h.distance for h in hits)
