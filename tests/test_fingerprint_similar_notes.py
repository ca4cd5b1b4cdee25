"""What `pomlia similar` says beside its results: fewer images than asked for, data sets of
few images; and that `--images N` is the exact answer for every N on an exact index."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError
from pomlia_hpc.fingerprint.candidates import fingerprint_set
from pomlia_hpc.fingerprint.extract import finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.index import build_index
from pomlia_hpc.fingerprint.nearest import MAX_K, nearest_images
from pomlia_hpc.fingerprint.sample import sample_rows
from pomlia_hpc.fingerprint.shards import run_shard
from pomlia_hpc.fingerprint.similar import FEW_IMAGES, similar_datasets
from pomlia_hpc.fingerprint.usable import LeftOut
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, runner
from tests.fixtures.factories import make_dataset, make_encoder


def _extract(workspace: Workspace, reg: Registry, refs: list[str]) -> None:
    plan = plan_extraction(reg, workspace, "enc", refs, shards=1, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)


@pytest.fixture
def world(workspace: Workspace) -> tuple[Registry, list[str]]:
    """Three data sets of 98 images and one of 5 (``tiny``), extracted with a seeded
    untrained encoder, and their exact index."""
    reg = Registry.open(workspace.db_url)
    refs = [
        make_dataset(workspace, reg, "blood_a", "bloodmnist", (60, 8, 30), seed=0),
        make_dataset(workspace, reg, "blood_b", "bloodmnist", (60, 8, 30), seed=1),
        make_dataset(workspace, reg, "organ", "organamnist", (60, 8, 30), seed=0),
        make_dataset(workspace, reg, "tiny", "dermamnist", (3, 1, 1), seed=0),
    ]
    make_encoder(workspace, reg, "enc", latent_dim=8)
    _extract(workspace, reg, refs)
    build_index(reg, workspace, "enc")
    return reg, refs


def test_more_images_asked_than_there_are_says_how_many(
    world: tuple[Registry, list[str]], wide_console: None
) -> None:
    """`--images 100000` with 201 images in the other data sets listed all 201 and said
    nothing: a user could not tell a short list from a complete answer."""
    out = cli_ok("similar", "blood_a", "-e", "enc", "--images", "100000")
    text = " ".join(out.split())
    assert "201 nearest images to blood_a" in text
    assert (
        "--images 100000: the data sets searched hold 201 image(s) in all; all 201 are listed"
        in text
    )
    res = runner.invoke(app, ["similar", "blood_a", "-e", "enc", "--images", "100000", "--json"])
    assert res.exit_code == 0 and res.stdout.count('"dataset"') == 201
    assert "hold 201 image(s) in all" in res.stderr
    # Asked for no more than there are: no such note.
    assert "image(s) in all" not in cli_ok("similar", "blood_a", "-e", "enc", "--images", "201")


def test_a_short_list_for_the_k_limit_says_so(workspace: Workspace, wide_console: None) -> None:
    """One query image reaches only its MAX_K nearest vectors: fewer images than asked and
    fewer than the index holds are listed, and the note says why, not 'all are listed'."""
    reg = Registry.open(workspace.db_url)
    refs = [
        make_dataset(workspace, reg, "big", "bloodmnist", (MAX_K + 40, 0, 0), chunk_rows=512),
        make_dataset(workspace, reg, "one", "organamnist", (1, 0, 0)),
    ]
    make_encoder(workspace, reg, "enc", latent_dim=4)
    _extract(workspace, reg, refs)
    build_index(reg, workspace, "enc")
    notes: list[str] = []
    hits = nearest_images(reg, workspace, "enc", "one", MAX_K + 40, notes_out=notes)
    assert len(hits) == MAX_K
    assert notes == [
        f"--images {MAX_K + 40}: {MAX_K} of the {MAX_K + 40} image(s) of the data sets "
        f"searched are listed: each query image reaches only its {MAX_K} nearest vectors"
    ]


def test_a_short_list_of_an_approximate_index_says_why(
    workspace: Workspace, world: tuple[Registry, list[str]]
) -> None:
    """An IVF index probing 1 of its 2 lists finds only part of the images: the note blames
    the approximate index, not the k limit alone."""
    reg, _refs = world
    build_index(reg, workspace, "enc", factory="IVF2,Flat", nprobe=1, rebuild=True)
    notes: list[str] = []
    hits = nearest_images(reg, workspace, "enc", "tiny", 100_000, notes_out=notes)
    assert len(hits) < 294
    assert notes == [
        f"--images 100000: {len(hits)} of the 294 image(s) of the data sets searched are "
        "listed: the index is approximate (IVF2,Flat: it searches part of itself) and each "
        f"query image reaches only its {MAX_K} nearest vectors"
    ]


def test_a_data_set_of_few_images_is_named(
    world: tuple[Registry, list[str]], wide_console: None
) -> None:
    """`tiny` (5 images) was ranked like the others, its distance resting on 5 embeddings,
    without a word; as the query, every distance rests on them."""
    reg, refs = world
    assert FEW_IMAGES > 5
    notes: list[str] = []
    found = similar_datasets(reg, "enc", "blood_a", k=10, notes_out=notes)
    assert refs[3] in [r.ref for r in found]
    assert notes == [
        f"few images: {refs[3]} (5): a distance over fewer than {FEW_IMAGES} images rests "
        "on little data (their mean and spread are uncertain); rank them with care"
    ]
    text = " ".join(cli_ok("similar", "blood_a", "-e", "enc").split())
    assert f"few images: {refs[3]} (5): a distance over fewer than" in text
    res = runner.invoke(app, ["similar", "blood_a", "-e", "enc", "--json"])
    assert res.exit_code == 0 and f"few images: {refs[3]} (5)" in res.stderr
    text = " ".join(cli_ok("similar", "tiny", "-e", "enc").split())
    assert f"few images: {refs[3]} (the query, 5): a distance" in text
    # Not listed (k=1 keeps the nearest, a 98-image set), not named.
    notes = []
    similar_datasets(reg, "enc", "blood_a", k=1, notes_out=notes)
    assert notes == []


def _brute_force(
    reg: Registry, query: str, others: list[str], n: int, metric: str
) -> list[tuple[str, int, float]]:
    """The ``n`` nearest images of ``others`` to ``query``'s (sampled as nearest_images
    samples them), each at its distance to its nearest query image, in numpy."""
    fs, _full = fingerprint_set(reg, "enc", query)
    q = sample_rows(fs.embeddings_path, 0, fs.n_vectors, 2000).astype(np.float64)
    rows = []
    for ref in others:
        x = np.asarray(zarr.open_group(fingerprint_set(reg, "enc", ref)[0].embeddings_path)["z"])
        x = x.astype(np.float64)
        if metric == "ip":
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            xn = x / np.linalg.norm(x, axis=1, keepdims=True)
            d = (1.0 - qn @ xn.T).min(axis=0)
        else:
            d = np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)).min(axis=0)
        rows += [(ref, i, float(v)) for i, v in enumerate(d)]
    rows.sort(key=lambda r: r[2])
    return rows[:n]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_nearest_images_are_exact_for_every_n(
    workspace: Workspace, world: tuple[Registry, list[str]], metric: str
) -> None:
    """An exact index starts k at 64 and widens by 16: for every N (beyond k, to all the
    images there are), L2 and inner product, the answer is the brute-force one."""
    reg, refs = world
    build_index(reg, workspace, "enc", metric=metric, rebuild=True)  # type: ignore[arg-type]
    for n in (1, 5, 63, 64, 65, 150, 201):
        got = nearest_images(reg, workspace, "enc", "blood_a", n)
        want = _brute_force(reg, "blood_a", refs[1:], n, metric)
        assert [(h.ref, h.row) for h in got] == [(r, i) for r, i, _d in want], (metric, n)
        assert np.allclose([h.distance for h in got], [d for _r, _i, d in want], atol=1e-4)


def test_all_versions_names_a_current_version_never_extracted_once(
    workspace: Workspace, world: tuple[Registry, list[str]], wide_console: None
) -> None:
    """'organ' has two embedded versions and a newer current one never embedded: with
    --all-versions both old ones are compared and the current one was not named at all
    (without it, it is); it is named once, with both versions that stand in for it."""
    reg, refs = world
    v2 = make_dataset(workspace, reg, "organ", "organamnist", (60, 8, 30), seed=4)
    _extract(workspace, reg, [v2])
    v3 = make_dataset(workspace, reg, "organ", "organamnist", (60, 8, 30), seed=5)
    left: list[LeftOut] = []
    found = similar_datasets(reg, "enc", "blood_a", k=10, all_versions=True, left_out=left)
    assert {refs[2], v2} <= {r.ref for r in found}
    assert [str(x) for x in left] == [
        f"{v3} (current version not extracted; {refs[2]}, {v2} compared instead; "
        "run pomlia fingerprint extract organ -e enc)"
    ]
    text = " ".join(cli_ok("similar", "blood_a", "-e", "enc", "--all-versions").split())
    assert f"left out: {v3} (current version not extracted; {refs[2]}, {v2} compared" in text


def test_patches_compare_the_data_sets_that_have_them_and_name_the_others(
    workspace: Workspace,
) -> None:
    """One data set extracted without --patch-grid made `similar --patches` refuse every
    comparison, naming no data set."""
    reg = Registry.open(workspace.db_url)
    refs = [
        make_dataset(workspace, reg, name, "bloodmnist", (12, 2, 4), seed=i)
        for i, name in enumerate(("pa", "pb", "plain"))
    ]
    make_encoder(workspace, reg, "enc", latent_dim=4)
    plan = plan_extraction(reg, workspace, "enc", refs[:2], shards=1, threads=1, patch_grid=2)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    _extract(workspace, reg, refs[2:])
    notes: list[str] = []
    found = similar_datasets(reg, "enc", "pa", patches=True, notes_out=notes)
    assert [r.ref for r in found] == [refs[1]]
    assert notes[0] == (
        f"not compared by patches (extracted without --patch-grid): {refs[2]}; `pomlia "
        "fingerprint extract DATASET -e enc --force --patch-grid 2` for each"
    )
    with pytest.raises(InputError) as err:
        similar_datasets(reg, "enc", "plain", patches=True)
    assert str(err.value).startswith(f"'{refs[2]}' has no patch embeddings: expected an "), err
    assert "`pomlia fingerprint extract plain -e enc --force --patch-grid 2`" in str(err.value)
