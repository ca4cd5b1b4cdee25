"""The folders a publishing call makes are flushed in their parents where the published thing
is recorded (a new dataset's store folder, a model's first monitor report folder), and a
parent that cannot be opened for reading does not fail a write that has succeeded."""

from __future__ import annotations

from pathlib import Path

import pytest

from pomlia_hpc import files
from pomlia_hpc.data.versioning import publish
from pomlia_hpc.monitor.publish import publish_report
from pomlia_hpc.registry import MonitorReport, Registry
from pomlia_hpc.workspace import Workspace


def _record_flushes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders and files :func:`pomlia_hpc.files.fsync_path` flushes from now on."""
    flushed: list[Path] = []
    real = files.fsync_path

    def record(path: Path) -> None:
        flushed.append(Path(path))
        real(path)

    monkeypatch.setattr(files, "fsync_path", record)
    return flushed


def test_a_new_datasets_store_folder_is_flushed_in_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store of a dataset's first version is published into `stores/<name>/`, which the
    publish had just made: the store and that folder's own entries were flushed, but not the
    folder's entry in `stores/`, so a power cut could take the whole folder while its row
    stayed recorded."""
    stores = tmp_path / "stores"
    staged = stores / ".ingest-blood.tmp"
    (staged / "data").mkdir(parents=True)
    (staged / "data" / "x").write_text("1")
    flushed = _record_flushes(monkeypatch)
    assert publish(staged, stores / "blood" / "v1")
    assert (stores / "blood" / "v1" / "data" / "x").read_text() == "1"
    assert stores in flushed


def test_a_models_first_report_folder_is_flushed_before_its_row(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model's first monitor report made `reports/<model>/`: the report's files were flushed
    before its row committed, but not that folder's entry in `reports/`, so the row could
    outlive the folder after a power cut."""
    final = workspace.path("reports", "blood", "20261201T020000Z-aaaaaa")
    flushed = _record_flushes(monkeypatch)
    at_commit: list[Path] = []

    def record() -> int:
        at_commit.extend(flushed)
        with reg.session() as s:
            row = MonitorReport(model_id=None, report_path=str(final / "report.json"))
            s.add(row)
            s.flush()
            return int(row.id)

    publish_report(reg, final, {"report.json": "{}"}, record)
    assert (final / "report.json").is_file()
    assert workspace.path("reports") in at_commit


def test_a_parent_that_cannot_be_read_does_not_fail_a_done_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flushing the folders a write made opens the folder above them, which the write never
    needed to read: a drop-box folder (mode 0o300: write and search only) refused it with
    EACCES after the file was in place, and the write said it failed."""
    real = files.fsync_path

    def refuse(path: Path) -> None:
        if Path(path) == tmp_path:  # the existing parent, as a non-root user meets it
            raise PermissionError(13, "Permission denied", str(path))
        real(path)

    monkeypatch.setattr(files, "fsync_path", refuse)
    target = files.write_atomic(tmp_path / "new" / "x.json", "{}")
    assert target.read_text() == "{}"
    with files.staged_dir(tmp_path / "other" / "bundle") as built:
        (built.path / "card.json").write_text("{}")
    assert built.published and (tmp_path / "other" / "bundle" / "card.json").is_file()
