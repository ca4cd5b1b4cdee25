"""`pomlia registry recover` on SQLite and on the real PostgreSQL: the lineage a store was
ingested with comes back as it was, and recovering changes nothing a user chose (which version
a dataset's plain name means)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, select, update

from pomlia_hpc.data.api import ingest, list_versions
from pomlia_hpc.data.recover import recover_stores
from pomlia_hpc.registry import Dataset, DatasetVersion, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_npz


def _lineage(registry: Registry) -> dict[str, str | None]:
    return {v.version: v.parent for v in list_versions(registry, "blood")}


def _current(registry: Registry) -> str:
    return next(v.version for v in list_versions(registry, "blood") if v.current)


def _forget(registry: Registry, *versions: str) -> None:
    """Lose the registry rows of ``versions`` of dataset blood (their stores stay; a row kept
    forgets such a parent)."""
    lost = DatasetVersion.version.in_(versions)
    with registry.session() as s:
        ids = list(s.scalars(select(DatasetVersion.id).where(lost)))
        kept = DatasetVersion.parent_id.in_(ids)
        s.execute(update(DatasetVersion).where(kept).values(parent_id=None))
        s.execute(delete(DatasetVersion).where(lost))
        if not s.scalars(select(DatasetVersion)).first():
            s.execute(delete(Dataset))


def test_a_branched_lineage_is_recovered_as_it_was_ingested(
    workspace: Workspace, registry: Registry, tmp_path: Path
) -> None:
    """A harvest's version grows from the model's training version, not from the newest:
    recovered, it named the version recovered before it as its parent."""
    first = ingest(workspace, registry, "blood", tiny_npz(tmp_path / "a.npz", seed=0))
    second = ingest(workspace, registry, "blood", tiny_npz(tmp_path / "b.npz", seed=1))
    third = ingest(
        workspace, registry, "blood", tiny_npz(tmp_path / "c.npz", seed=2), parent=first.version
    )
    before = _lineage(registry)
    assert before == {
        first.version: None,
        second.version: first.version,
        third.version: first.version,
    }
    _forget(registry, first.version, second.version, third.version)
    res = recover_stores(workspace, registry)
    assert len(res.registered) == 3 and res.skipped == []
    assert _lineage(registry) == before


def test_recover_leaves_what_a_plain_name_means(
    workspace: Workspace, registry: Registry, tmp_path: Path
) -> None:
    """Recovering a lost row made that version (or the last one in lineage order) the one the
    plain name means: `automl run blood` then trained on another version than the user had
    chosen by adding it again."""
    first = ingest(workspace, registry, "blood", tiny_npz(tmp_path / "a.npz", seed=0))
    second = ingest(workspace, registry, "blood", tiny_npz(tmp_path / "b.npz", seed=1))
    ingest(workspace, registry, "blood", tiny_npz(tmp_path / "again.npz", seed=0))  # chosen
    assert _current(registry) == first.version
    _forget(registry, second.version)
    assert recover_stores(workspace, registry).registered == [f"blood@{second.version}"]
    assert _current(registry) == first.version
    assert _lineage(registry) == {first.version: None, second.version: first.version}
    # a dataset that records no current version means its newest registered: the recovered
    # row, registered last, must not become it
    with registry.session() as s:
        s.execute(update(Dataset).values(current_version_id=None))
    assert _current(registry) == second.version
    _forget(registry, first.version)
    assert recover_stores(workspace, registry).registered == [f"blood@{first.version}"]
    assert _current(registry) == second.version
