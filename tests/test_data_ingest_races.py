"""Ingests of one dataset name at once (SQLite and PostgreSQL), a recording that fails after the
store was published, the empty ``stores/<name>/`` folder a killed ingest leaves, and a chunk
still being written when another one's failure stops the ingest."""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from pomlia_hpc.data import api, versioning, writer
from pomlia_hpc.data.api import ingest, list_versions
from pomlia_hpc.data.store import open_store
from pomlia_hpc.data.versioning import VersionRecord
from pomlia_hpc.data.writer import StoreWriter
from pomlia_hpc.errors import BusyError, InputError
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import nothing_visible, tiny_npz


def _pause_first_insert(registry: Registry, table: str, wait_s: float = 3.0) -> None:
    """Make each thread's first INSERT into ``table`` wait for the other thread's (at most
    ``wait_s`` s): without a lock around the check and the insert, both have checked for
    the row by then, and one insert breaks the unique key. Under the lock the second thread
    waits for the first's commit instead, the barrier times out and both go on."""
    barrier = threading.Barrier(2, timeout=wait_s)
    waited = threading.local()

    @event.listens_for(registry.engine, "before_cursor_execute")
    def pause(*args: Any) -> None:
        statement = str(args[2]).lstrip().upper()
        if statement.startswith(f"INSERT INTO {table.upper()} ") and not getattr(
            waited, "done", False
        ):
            waited.done = True
            # broken: the other thread waits on the lock (the expected case)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()


def _ingest_at_once(
    workspace: Workspace, registry: Registry, name: str, sources: list[Path]
) -> list[VersionRecord]:
    records: list[VersionRecord] = []
    errors: list[BaseException] = []

    def run(source: Path) -> None:
        try:
            records.append(ingest(workspace, registry, name, source))
        except BaseException as exc:  # reported below, with the test's failure
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(src,)) for src in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    return records


def test_two_new_versions_of_a_new_name_at_once_are_both_recorded(
    workspace: Workspace, registry: Registry, tmp_path: Path
) -> None:
    """PostgreSQL: the loser failed with "duplicate key value violates unique constraint
    datasets_name_key", its store published under stores/NAME/ but not registered."""
    _pause_first_insert(registry, "datasets")
    sources = [tiny_npz(tmp_path / f"{i}.npz", seed=i) for i in range(2)]
    records = _ingest_at_once(workspace, registry, "blood", sources)
    assert all(r.created for r in records)
    listed = {v.version for v in list_versions(registry, "blood")}
    assert listed == {r.version for r in records} and len(listed) == 2
    stores = {p.name for p in (workspace.stores / "blood").iterdir()}
    assert stores == {f"{v}.zarr" for v in listed}


def test_the_same_content_twice_at_once_is_one_version(
    workspace: Workspace, registry: Registry, tmp_path: Path
) -> None:
    """PostgreSQL: the loser failed on "dataset_versions_dataset_id_version_key"; now one
    records the version and the other finds it ("identical content: existing version")."""
    ingest(workspace, registry, "blood", tiny_npz(tmp_path / "first.npz", seed=5))
    _pause_first_insert(registry, "dataset_versions")
    source = tiny_npz(tmp_path / "same.npz", seed=1)
    records = _ingest_at_once(workspace, registry, "blood", [source, source])
    assert sorted(r.created for r in records) == [False, True]
    assert records[0].version == records[1].version
    assert len(list_versions(registry, "blood")) == 2


def test_a_store_whose_recording_failed_is_removed(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed insert left the store it had just published under stores/NAME/, visible to
    `registry recover` but not to `data list`: no store without its row."""

    def refused(*args: Any, **kwargs: Any) -> VersionRecord:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(api, "record_version", refused)
    with pytest.raises(RuntimeError, match="went away"):
        ingest(workspace, reg, "blood", tiny_npz(tmp_path / "b.npz"))
    assert nothing_visible(workspace, "blood")


def test_empty_store_folders_of_killed_ingests_are_swept(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`kill -9` between making stores/NAME/ and publishing into it left the empty folder for
    ever; the next ingest removes it (of any name), never a folder with something in it."""
    (workspace.stores / "killed").mkdir(parents=True)
    (workspace.stores / "full").mkdir()
    (workspace.stores / "full" / "note.txt").write_text("mine")
    ingest(workspace, reg, "blood", tiny_npz(tmp_path / "b.npz"))
    assert not (workspace.stores / "killed").exists()
    assert (workspace.stores / "full" / "note.txt").exists()
    assert (workspace.stores / "blood").is_dir()


def test_a_folder_swept_before_the_rename_is_made_again(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another ingest's sweep may remove stores/NAME/ between this ingest's mkdir and its
    rename (the folder is empty then): the rename fails with ENOENT, and the folder is made
    again rather than the ingest failing."""
    real = versioning.publish_dir
    calls: list[Path] = []

    def swept_first(staged: Path, target: Path, **kwargs: Any) -> bool:
        calls.append(target)
        if len(calls) == 1:
            target.parent.rmdir()  # as sweep_empty_folders in another process
            raise FileNotFoundError(2, "No such file or directory", str(target))
        return real(staged, target, **kwargs)

    monkeypatch.setattr(versioning, "publish_dir", swept_first)
    rec = ingest(workspace, reg, "blood", tiny_npz(tmp_path / "b.npz"))
    assert len(calls) == 2 and rec.store_path.is_dir()
    assert [v.version for v in list_versions(reg, "blood")] == [rec.version]


def test_a_chunk_still_written_when_another_fails_leaves_nothing_behind(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk on one of the last chunks surfaced while the writer waited for them
    (``finish``): the ingest removed its staging folder and said "nothing was kept" while the
    writer's threads went on writing the chunk after it, which made the folder again (a
    hidden ``.ingest-*`` folder left in stores/, for as long as a `loop watch` daemon lives)."""
    monkeypatch.setattr(writer, "chunk_rows_for", lambda *shape: 8)  # 60 rows: 8 chunks
    real = StoreWriter.write_chunk
    started, written = threading.Event(), threading.Event()

    def write(self: StoreWriter, idx: int, data: Any) -> tuple[int, str]:
        if idx == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        if idx == 6:
            started.set()
            time.sleep(0.5)  # still writing when chunk 5's failure is collected
            try:
                return real(self, idx, data)
            finally:
                written.set()
        return real(self, idx, data)

    monkeypatch.setattr(StoreWriter, "write_chunk", write)
    with pytest.raises(InputError, match="no space left writing dataset store"):
        ingest(workspace, reg, "blood", tiny_npz(tmp_path / "b.npz"), workers=2)
    # the slow chunk, if it began before the failure stopped the writer (under load it may
    # not have), is done: before the ingest returned, once fixed
    assert not started.is_set() or written.wait(30)
    writers = [t for t in threading.enumerate() if t.name.startswith("pomlia-write")]
    assert writers == [] and nothing_visible(workspace, "blood")


def test_ingests_of_one_name_at_once_record_the_parent_each_grew_from(
    workspace: Workspace, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ingests that both began before either was recorded each grew from the same version
    (its split carried from it, its store's metadata naming it): the registry gave the one
    recorded second the other as its parent, so `data list` and the store disagreed on its
    lineage (and `registry recover` made it otherwise again)."""
    first = ingest(workspace, registry, "blood", tiny_npz(tmp_path / "a.npz", seed=0))
    barrier = threading.Barrier(2, timeout=30)
    real = api.carry_split

    def both_begun(*args: Any, **kwargs: Any) -> Any:
        barrier.wait()  # each has read the version it grows from before either records
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "carry_split", both_begun)
    sources = [tiny_npz(tmp_path / f"{i}.npz", seed=i) for i in (1, 2)]
    records = _ingest_at_once(workspace, registry, "blood", sources)
    assert [r.parent for r in records] == [first.version, first.version]
    listed = {v.version: v.parent for v in list_versions(registry, "blood")}
    for rec in records:
        assert listed[rec.version] == first.version
        assert open_store(rec.store_path).meta["parent"] == first.version


def _failing_first_recording(
    monkeypatch: pytest.MonkeyPatch, then: threading.Event, failed: threading.Event
) -> threading.Event:
    """Make the recording of the ingest run in a thread named "first" wait for ``then``, then
    fail (``failed`` is set once its store's removal was decided); returns the event set when
    that ingest has published its store and is about to record it."""
    published = threading.Event()

    def recording(*args: Any, **kwargs: Any) -> VersionRecord:
        if threading.current_thread().name != "first":
            return versioning.record_version(*args, **kwargs)
        published.set()
        assert then.wait(60)
        raise RuntimeError("permission denied for table datasets")

    real_unpublish = versioning.unpublish

    def unpublish(*args: Any) -> bool:
        try:
            return real_unpublish(*args)
        finally:
            failed.set()

    monkeypatch.setattr(api, "record_version", recording)
    monkeypatch.setattr(api, "unpublish", unpublish)
    return published


def _first(workspace: Workspace, registry: Registry, source: Path) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(RuntimeError):
            ingest(workspace, registry, "blood", source)

    thread = threading.Thread(target=run, name="first")
    thread.start()
    return thread


def test_a_failed_recording_keeps_a_store_another_ingest_recorded(
    workspace: Workspace, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores are content-addressed: a second ingest of the same content found the first's
    store published and recorded it; the first's recording then failed (a read-only user,
    Ctrl-C) and it removed the store, leaving the second's version without one."""
    second_done, failed = threading.Event(), threading.Event()
    published = _failing_first_recording(monkeypatch, second_done, failed)
    source = tiny_npz(tmp_path / "same.npz")
    first = _first(workspace, registry, source)
    assert published.wait(60)
    rec = ingest(workspace, registry, "blood", source)  # finds the store, records it
    second_done.set()
    first.join(60)
    assert failed.is_set() and not first.is_alive()
    assert [v.version for v in list_versions(registry, "blood")] == [rec.version]
    assert open_store(rec.store_path).n_images == rec.n_images  # still there


def test_a_store_removed_by_a_failed_recording_is_not_recorded(
    workspace: Workspace, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: the second ingest found the store published and read it, and the first
    removed it (its recording failed, no row named it) before the second recorded it: a
    registered version without its store. The second now records nothing and says to run it
    again."""
    checked, failed = threading.Event(), threading.Event()
    published = _failing_first_recording(monkeypatch, checked, failed)
    recording = api.record_version

    def read_then_record(*args: Any, **kwargs: Any) -> VersionRecord:
        if threading.current_thread().name != "first":  # the second: the store read
            checked.set()
            assert failed.wait(60)
        return recording(*args, **kwargs)

    monkeypatch.setattr(api, "record_version", read_then_record)
    source = tiny_npz(tmp_path / "same.npz")
    first = _first(workspace, registry, source)
    assert published.wait(60)
    with pytest.raises(BusyError, match="was removed meanwhile by another ingest of the same"):
        ingest(workspace, registry, "blood", source)
    first.join(60)
    assert list_versions(registry) == [] and nothing_visible(workspace, "blood")
    rec = ingest(workspace, registry, "blood", source)  # the same command again
    assert open_store(rec.store_path).n_images == rec.n_images
