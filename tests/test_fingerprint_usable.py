"""Readers (``similar`` with and without ``--images``, ``index build``, ``plot latent``,
``fingerprint show``) use only usable embeddings: made with the encoder's current weights,
on disk, recorded as complete (or finished, unrecorded, and then used as found, writing
nothing); every other set is left out and named. Identical content under another name is
marked, not searched, and not trained on twice by a refresh."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from pomlia_hpc.cli import app
from pomlia_hpc.data.store import find_version
from pomlia_hpc.errors import NotFoundError
from pomlia_hpc.fingerprint.autoencoder import Autoencoder
from pomlia_hpc.fingerprint.candidates import fingerprint_set
from pomlia_hpc.fingerprint.extract import finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.index import build_index, load_index
from pomlia_hpc.fingerprint.nearest import nearest_images
from pomlia_hpc.fingerprint.plots import plot_encoder_latent
from pomlia_hpc.fingerprint.refresh import plan_refresh
from pomlia_hpc.fingerprint.shards import run_shard
from pomlia_hpc.fingerprint.similar import similar_datasets
from pomlia_hpc.fingerprint.summary import summary_path
from pomlia_hpc.fingerprint.train import TrainConfig, get_encoder, register_encoder
from pomlia_hpc.fingerprint.train import write_checkpoint as write_encoder
from pomlia_hpc.fingerprint.usable import LeftOut, unrecorded, usable_sets
from pomlia_hpc.registry import FingerprintSet, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, runner
from tests.fixtures.factories import make_dataset, make_encoder

pytestmark = pytest.mark.usefixtures("wide_console")


def _embed(reg: Registry, ws: Workspace, refs: list[str], *, force: bool = False) -> None:
    plan = plan_extraction(reg, ws, "enc", refs, shards=1, threads=1, force=force)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)


def _retrain(reg: Registry, seed: int = 7) -> None:
    """New weights in the encoder's file, as a retrain under the same name writes them."""
    enc = get_encoder(reg, "enc")
    torch.manual_seed(seed)
    config = TrainConfig.model_validate(enc.config)
    write_encoder(Path(enc.checkpoint_path), Autoencoder(config.encoder).eval(), config, [])


@pytest.fixture
def three(workspace: Workspace, reg: Registry) -> list[str]:
    refs = [
        make_dataset(workspace, reg, "blood", "bloodmnist", (20, 4, 8), seed=0),
        make_dataset(workspace, reg, "organ", "organamnist", (20, 4, 8), seed=0),
        make_dataset(workspace, reg, "derma", "dermamnist", (20, 4, 8), seed=0),
    ]
    make_encoder(workspace, reg, "enc", latent_dim=4)
    _embed(reg, workspace, refs)
    build_index(reg, workspace, "enc")
    return refs


def _names(left: list[LeftOut]) -> list[str]:
    return [x.ref for x in left]


def test_embeddings_of_earlier_weights_are_left_out_by_every_reader(
    workspace: Workspace, reg: Registry, three: list[str], tmp_path: Path
) -> None:
    _retrain(reg)
    _embed(reg, workspace, three[:2])  # derma keeps the vectors of the earlier weights
    left: list[LeftOut] = []
    found = similar_datasets(reg, "enc", "blood", left_out=left)
    assert [r.ref for r in found] == [three[1]]
    assert [str(x) for x in left] == [
        "derma (embedded with earlier weights of enc; run pomlia fingerprint extract derma -e enc)"
    ]
    with pytest.raises(NotFoundError, match=r"derma.*embedded with earlier weights of enc"):
        fingerprint_set(reg, "enc", "derma")

    built = build_index(reg, workspace, "enc")
    assert built.rebuilt and _names(built.left_out) == ["derma"]
    held = {e.ref for e in load_index(reg, workspace, "enc").manifest.sets.values()}
    assert held == set(three[:2])

    left = []
    hits = nearest_images(reg, workspace, "enc", "blood", 10, left_out=left)
    assert hits and {h.ref for h in hits} == {three[1]} and _names(left) == ["derma"]

    left = []
    plot_encoder_latent(reg, "enc", None, tmp_path / "plots", left_out=left)
    assert _names(left) == ["derma"]

    out = " ".join(cli_ok("--home", str(workspace.home), "similar", "blood", "-e", "enc").split())
    assert "left out: derma (embedded with earlier weights of enc; run pomlia fingerprint " in out
    assert "derma@" not in out.split("left out")[0]  # not in the table


def test_an_index_older_than_re_extracted_embeddings_is_not_searched(
    workspace: Workspace, reg: Registry, three: list[str]
) -> None:
    _retrain(reg)
    _embed(reg, workspace, three)  # every set re-extracted, the index not rebuilt
    left: list[LeftOut] = []
    with pytest.raises(NotFoundError, match="holds no other dataset's images"):
        nearest_images(reg, workspace, "enc", "blood", 5, left_out=left)
    build_index(reg, workspace, "enc")
    left = []
    hits = nearest_images(reg, workspace, "enc", "blood", 5, left_out=left)
    assert hits and left == []


def test_an_unfinished_extraction_is_named_with_how_far_it_got(
    workspace: Workspace, reg: Registry, three: list[str]
) -> None:
    plan_extraction(reg, workspace, "enc", ["organ"], shards=1, threads=1, force=True)
    left: list[LeftOut] = []
    found = similar_datasets(reg, "enc", "blood", left_out=left)
    assert [r.ref for r in found] == [three[2]]
    assert [str(x) for x in left] == [
        "organ (extraction unfinished (running, or stopped), 0 of 1 shard(s) done; run pomlia "
        "fingerprint extract organ "
        "-e enc)"
    ]
    with pytest.raises(NotFoundError, match=r"organ@\w+' .*extraction unfinished .*, 0 of 1"):
        fingerprint_set(reg, "enc", "organ")


def test_a_missing_embeddings_folder_is_one_line_and_left_out(
    workspace: Workspace, reg: Registry, three: list[str]
) -> None:
    gone = Path(fingerprint_set(reg, "enc", "derma")[0].embeddings_path)
    shutil.rmtree(gone)
    summary_path(gone).unlink()
    home = str(workspace.home)
    out = " ".join(cli_ok("--home", home, "similar", "blood", "-e", "enc").split())
    assert f"left out: derma (embeddings folder {gone} is missing; run pomlia fingerprint " in out
    out = " ".join(cli_ok("--home", home, "index", "build", "-e", "enc").split())
    assert "index rebuilt" in out and "left out: derma" in out
    out = " ".join(
        cli_ok("--home", home, "similar", "blood", "-e", "enc", "--images", "40").split()
    )
    assert "derma@" not in out.split("left out")[0]
    res = runner.invoke(app, ["--home", home, "similar", "derma", "-e", "enc"])
    assert isinstance(res.exception, NotFoundError)
    text = str(res.exception)
    assert f"embeddings folder {gone} is missing" in text
    assert "pomlia fingerprint extract derma -e enc" in text and "\n" in text  # message + hint


def test_images_from_a_removed_folder_are_not_returned_from_an_old_index(
    workspace: Workspace, reg: Registry, three: list[str]
) -> None:
    gone = Path(fingerprint_set(reg, "enc", "derma")[0].embeddings_path)
    shutil.rmtree(gone)
    left: list[LeftOut] = []
    hits = nearest_images(reg, workspace, "enc", "blood", 40, left_out=left)  # index not rebuilt
    assert {h.ref for h in hits} == {three[1]} and _names(left) == ["derma"]


def test_the_same_content_under_another_name_is_marked_and_not_searched(
    workspace: Workspace, reg: Registry
) -> None:
    pneu = make_dataset(workspace, reg, "pneu", "pneumoniamnist", (20, 4, 8), seed=0)
    copy = make_dataset(workspace, reg, "copy", "pneumoniamnist", (20, 4, 8), seed=0)
    blood = make_dataset(workspace, reg, "blood", "bloodmnist", (20, 4, 8), seed=0)
    assert pneu.split("@")[1] == copy.split("@")[1]
    make_encoder(workspace, reg, "enc", latent_dim=4)
    _embed(reg, workspace, [pneu, copy, blood])
    build_index(reg, workspace, "enc")
    found = similar_datasets(reg, "enc", "pneu")
    assert [(r.ref, r.same_content) for r in found] == [(copy, True), (blood, False)]
    left: list[LeftOut] = []
    hits = nearest_images(reg, workspace, "enc", "pneu", 10, left_out=left)
    assert {h.ref for h in hits} == {blood}
    assert [str(x) for x in left] == [
        f"{copy} (same content as the query: copies of its own images)"
    ]
    home = str(workspace.home)
    out = " ".join(cli_ok("--home", home, "similar", "pneu", "-e", "enc").split())
    assert f"same content as pneu: {copy}" in out


def test_refresh_counts_a_trained_content_hash_as_known_and_trains_on_it_once(
    workspace: Workspace, reg: Registry
) -> None:
    pneu = make_dataset(workspace, reg, "pneu", "pneumoniamnist", (20, 4, 8), seed=0)
    enc = make_encoder(workspace, reg, "ae", latent_dim=4)
    register_encoder(  # as if trained on pneu
        reg,
        "ae",
        TrainConfig.model_validate(enc.config),
        [find_version(reg, pneu).id],
        [],
        enc.checkpoint_path,
    )
    copy = make_dataset(workspace, reg, "copy", "pneumoniamnist", (20, 4, 8), seed=0)
    plan = plan_refresh(reg, workspace, "ae")
    assert not plan.needed and plan.new == []
    blood = make_dataset(workspace, reg, "blood", "bloodmnist", (20, 4, 8), seed=0)
    plan = plan_refresh(reg, workspace, "ae")
    assert plan.new == [blood]
    assert plan.datasets == [blood, pneu] and plan.copies == [copy]
    assert sorted(plan.embed) == sorted([blood, pneu, copy])


#: SQL that writes: what a reader must never send.
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


@pytest.fixture
def sql_writes() -> Iterator[list[str]]:
    """Every writing SQL statement any engine of this process sends while the test runs."""
    seen: list[str] = []

    def spy(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in _WRITES:
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", spy)
    yield seen
    event.remove(Engine, "before_cursor_execute", spy)


def _files(root: Path, *skip: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime (ns) of every file under ``root``, but the registry's and ``skip``'s."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.startswith("registry.db")
        and not any(p.is_relative_to(s) for s in skip)
    }


def test_a_finished_unrecorded_extraction_is_used_by_readers_that_write_nothing(
    workspace: Workspace, reg: Registry, three: list[str], tmp_path: Path, sql_writes: list[str]
) -> None:
    """Readers recorded a finished extraction whose driver was killed (and wrote its summary):
    a query wrote the registry and the embeddings folder. They now use it as found, say so in
    one line with the command that records it, and write nothing."""
    before = similar_datasets(reg, "enc", "blood")
    # `extract --force` of organ: its job ran every shard, its driver never recorded it.
    plan = plan_extraction(reg, workspace, "enc", ["organ"], shards=1, threads=1, force=True)
    for spec in plan.specs:
        run_shard(spec)
    out = Path(plan.specs[0].out_path)
    assert not summary_path(out).exists()
    home, organ = str(workspace.home), three[1]

    def rows() -> list[tuple[Any, ...]]:
        with reg.session() as s:
            return [
                (f.id, f.status, f.n_vectors, f.mean) for f in s.scalars(select(FingerprintSet))
            ]

    recorded, files = rows(), _files(workspace.home, workspace.path("reports"))
    sql_writes.clear()
    note = f"not recorded: {organ} (run pomlia fingerprint extract {organ} -e enc to record it)"
    out_similar = " ".join(cli_ok("--home", home, "similar", "blood", "-e", "enc").split())
    assert organ in out_similar.split("used as found")[0] and note in out_similar
    shown = " ".join(cli_ok("--home", home, "fingerprint", "show", "organ", "-e", "enc").split())
    assert '"n_vectors": 32' in shown and note in shown
    plots = tmp_path / "plots"
    assert note in " ".join(cli_ok("--home", home, "plot", "latent", "--out", str(plots)).split())
    after = similar_datasets(reg, "enc", "blood")
    assert [(r.ref, round(r.distance, 6)) for r in after] == [
        (r.ref, round(r.distance, 6)) for r in before
    ]
    assert fingerprint_set(reg, "enc", "organ")[0].status == "running"  # as recorded
    assert sql_writes == [] and rows() == recorded and _files(workspace.home) == files
    # index build writes its index only: organ's vectors go in, its record stays as it was
    built = " ".join(cli_ok("--home", home, "index", "build", "-e", "enc").split())
    assert f"added {organ}" in built and note in built
    assert {e.ref for e in load_index(reg, workspace, "enc").manifest.sets.values()} == set(three)
    images = cli_ok("--home", home, "similar", "blood", "-e", "enc", "--images", "40")
    assert note in " ".join(images.split())
    index = workspace.path("indexes")
    assert sql_writes == [] and rows() == recorded
    assert _files(workspace.home, index) == {
        k: v for k, v in files.items() if index not in Path(k).parents
    }

    # The extraction command records it, summary first, running nothing again.
    cli_ok("--home", home, "fingerprint", "extract", organ, "-e", "enc")
    assert fingerprint_set(reg, "enc", "organ")[0].status == "complete"
    assert summary_path(out).is_file()
    assert note not in " ".join(cli_ok("--home", home, "similar", "blood", "-e", "enc").split())


def test_the_command_that_records_an_unrecorded_extraction_keeps_its_patch_grid(
    workspace: Workspace, reg: Registry, three: list[str]
) -> None:
    """The plain extract command would embed again a set extracted with --patch-grid 2 (a
    plan of another grid is not reused), losing its patches: the note names the grid."""
    plan = plan_extraction(
        reg, workspace, "enc", ["organ"], shards=1, threads=1, patch_grid=2, force=True
    )
    for spec in plan.specs:
        run_shard(spec)
    found = unrecorded(usable_sets(reg, "enc").sets, "enc")
    organ = three[1]
    assert [x.run for x in found] == [f"pomlia fingerprint extract {organ} -e enc --patch-grid 2"]
    group = Path(plan.specs[0].out_path) / "zarr.json"
    stamp = group.stat().st_mtime_ns
    cli_ok("--home", str(workspace.home), "fingerprint", *found[0].run.split()[2:])
    assert fingerprint_set(reg, "enc", "organ")[0].status == "complete"
    assert group.stat().st_mtime_ns == stamp  # recorded, not embedded again
    assert unrecorded(usable_sets(reg, "enc").sets, "enc") == []
