"""`strategy import` keeps none of its rows in memory: it validates the whole file before any
lock, keeping the checked rows on disk, then inserts them chunk by chunk in one transaction;
an error in any chunk (or a file changed while it was read) leaves the registry as it was."""

from __future__ import annotations

import errno
import sqlite3
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sqlalchemy import func, select

from pomlia_hpc.errors import InputError, NotFoundError, PomliaError, StorageError
from pomlia_hpc.registry import KbResult, KbSource, Registry
from pomlia_hpc.strategy import kb, longformat, overlap
from pomlia_hpc.workspace import Workspace

HEADER = "dataset,arch,init,mode,img_size,metric,value\n"
META_HEADER = "dataset,task_type,n_channels,n_classes,n_train\n"


def _files(tmp_path: Path, n_datasets: int, n_sizes: int, value: float = 0.5) -> tuple[Path, Path]:
    """A table of ``n_datasets`` x ``n_sizes`` input sizes x 2 metrics rows and its meta file."""
    meta = tmp_path / "m.csv"
    meta.write_text(META_HEADER + "".join(f"d{d},binary,1,2,100\n" for d in range(n_datasets)))
    rows = (
        f"d{d},resnet18,pretrained,full,{px},{m},{value}\n"
        for d in range(n_datasets)
        for px in range(1, n_sizes + 1)
        for m in ("acc", "auc")
    )
    table = tmp_path / "r.csv"
    table.write_text(HEADER + "".join(rows))
    return table, meta


def _results(reg: Registry) -> dict[str, int]:
    with reg.session() as s:
        q = (
            select(KbSource.name, func.count(KbResult.id))
            .join(KbResult, KbResult.source_id == KbSource.id, isouter=True)
            .group_by(KbSource.name)
        )
        return {name: int(n) for name, n in s.execute(q)}


def test_an_import_holds_one_chunk_of_rows_not_the_file(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row was held until the transaction, twice (the rows, then the insert's dicts):
    about 3 KB a row, 1.5 GB for a 500,000-row file. The peak of Python's allocations while
    3,000 rows are imported in chunks of 100 now stays far below what holding them took."""
    monkeypatch.setattr(longformat, "CHUNK_ROWS", 100, raising=False)
    table, meta = _files(tmp_path, 30, 50)
    warm = tmp_path / "warm.csv"  # the first import's statements compiled, not measured
    warm.write_text(HEADER + "d0,resnet34,pretrained,full,28,acc,0.5\n")
    kb.import_table(registry, warm, "warm", meta_path=meta)
    tracemalloc.start()
    try:
        report = kb.import_table(registry, table, "t", meta_path=meta)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.n_results == 3000 and _results(registry)["t"] == 3000
    assert peak < 3_000_000, f"{peak:,} bytes at the peak of importing 3,000 rows"


def test_the_figures_of_another_source_on_the_same_data_sets_are_held_compactly(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check against other sources held each of their figures on the file's data sets as
    objects of its own (a 500,000-row source took 700 MB). Importing 3,000 rows over another
    source's same 3,000 figures (equal values: no conflict) now peaks far below that."""
    monkeypatch.setattr(longformat, "CHUNK_ROWS", 100, raising=False)
    monkeypatch.setattr(overlap, "FETCH_ROWS", 100, raising=False)
    table, meta = _files(tmp_path, 30, 50)
    kb.import_table(registry, table, "one", meta_path=meta)
    tracemalloc.start()
    try:
        kb.import_table(registry, table, "two", meta_path=meta)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _results(registry) == {"one": 3000, "two": 3000}
    assert peak < 2_500_000, f"{peak:,} bytes at the peak of importing over 3,000 figures"


def test_a_refusal_in_a_later_chunk_imports_nothing_and_keeps_the_replaced_source(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The value another source gives differently is found while the chunks are inserted
    (in the transaction): the chunks inserted before it go too, and the source being
    replaced keeps its rows."""
    monkeypatch.setattr(longformat, "CHUNK_ROWS", 2, raising=False)
    table, meta = _files(tmp_path, 3, 2)
    before = tmp_path / "before.csv"  # without the last row, which 'other' gives differently
    before.write_text(table.read_text().rsplit("\n", 2)[0] + "\n")
    kb.import_table(registry, before, "mine", meta_path=meta)
    other = tmp_path / "other.csv"
    other.write_text(HEADER + "d2,resnet18,pretrained,full,2,auc,0.9\n")
    kb.import_table(registry, other, "other", meta_path=meta)
    with pytest.raises(InputError) as err:
        kb.import_table(registry, table, "mine", meta_path=meta, replace=True)
    msg = str(err.value)
    assert f"{table}: line 13, column 'value': 0.5 for data set 'd2'" in msg, msg
    assert "source 'other' gives 0.9" in msg and "nothing was imported" in msg, msg
    assert _results(registry) == {"mine": 11, "other": 1}
    with pytest.raises(InputError, match="nothing was imported"):
        kb.import_table(registry, table, "new", meta_path=meta)
    assert _results(registry) == {"mine": 11, "other": 1}


def test_a_file_changed_between_its_two_readings_imports_nothing(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row appended after the file was validated would be imported unchecked against the
    count and checksum the source records: the import is refused instead."""
    table, meta = _files(tmp_path, 2, 2)
    check = kb.check_file

    def check_then_append(*args: Any, **kwargs: Any) -> Any:
        checked = check(*args, **kwargs)
        with table.open("a") as f:
            f.write("d1,resnet34,pretrained,full,28,acc,0.7\n")
        return checked

    monkeypatch.setattr(kb, "check_file", check_then_append)
    with pytest.raises(InputError) as err:
        kb.import_table(registry, table, "t", meta_path=meta)
    msg = str(err.value)
    assert f"{table}: the file changed while it was imported" in msg, msg
    assert "nothing was imported" in msg, msg
    assert _results(registry) == {}


@pytest.mark.parametrize(
    ("name", "error", "said"),
    [
        ("missing.csv", NotFoundError, "no such file; expected a CSV file; nothing was imported"),
        (".", InputError, "cannot be read ("),
    ],
)
def test_a_file_that_cannot_be_read_is_one_error(
    registry: Registry, tmp_path: Path, name: str, error: type[PomliaError], said: str
) -> None:
    """The checksum taken before the file was read made a missing file or a folder an
    internal error (FileNotFoundError, IsADirectoryError) with a traceback. A missing file is
    exit 4, as for every file a command is pointed at (it was 2)."""
    path = tmp_path / name
    with pytest.raises(error) as err:
        kb.import_table(registry, path, "t")
    assert str(err.value).startswith(f"{path}: {said}"), err.value
    assert _results(registry) == {}


def test_a_header_cell_too_long_for_csv_is_one_error(registry: Registry, tmp_path: Path) -> None:
    """A header cell over the csv module's field limit (131,072 characters) ended in a
    traceback, exit 70; the same cell in a data row was one error already."""
    path = tmp_path / "wide.csv"
    path.write_text("dataset,arch,init,mode,img_size,metric,value," + "x" * 200_000 + "\n")
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "t")
    msg = str(err.value)
    assert msg.startswith(f"{path}: not a valid CSV file (field larger than field limit"), msg
    assert msg.endswith("; expected a readable UTF-8 CSV file; nothing was imported"), msg


@pytest.mark.parametrize(
    "changed",
    [
        "d0,ResNet-18,pretrained,full,1,acc,0.5\n",  # one strategy twice: WithinFile's refusal
        "d1,resnet18,pretrained,full,1,acc,0.5\n",  # a data set the first reading did not see
    ],
)
def test_a_file_changed_right_after_its_validation_imports_nothing(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changed: str
) -> None:
    """The checksum was taken after the first reading, so a file rewritten in between (same
    row count) was read by the second alone: two spellings of one strategy were imported
    both, and a data set the first reading never saw was an internal error (KeyError)."""
    table, meta = _files(tmp_path, 2, 1)  # meta-features of d0 and d1
    table.write_text(
        HEADER + "d0,resnet18,pretrained,full,1,acc,0.5\n" + "d0,x,scratch,knn,1,acc,0.5\n"
    )
    check = kb.check_file
    calls: list[int] = []

    def check_then_rewrite(*args: Any, **kwargs: Any) -> Any:
        checked = check(*args, **kwargs)
        if not calls:
            calls.append(1)
            table.write_text(HEADER + "d0,resnet18,pretrained,full,1,acc,0.5\n" + changed)
        return checked

    monkeypatch.setattr(kb, "check_file", check_then_rewrite)
    with pytest.raises(InputError) as err:
        kb.import_table(registry, table, "t", meta_path=meta)
    assert "nothing was imported" in str(err.value), err.value
    assert _results(registry) == {}


def test_the_file_is_read_before_the_write_lock_and_what_was_read_is_inserted(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import read its file a second time inside its transaction, so SQLite's write lock
    was held for the parsing (30 to 50 s for 500,000 rows): every other command waited or
    timed out. The file is now read once, before the lock, and its checked rows inserted
    from disk: while it is read another writer gets the lock at once, and the transaction
    reads no file (one removed as the transaction starts is imported whole)."""
    monkeypatch.setattr(longformat, "CHUNK_ROWS", 7, raising=False)
    table, meta = _files(tmp_path, 4, 5)
    db = str(workspace.home / "registry.db")
    writable: list[bool] = []
    scan = kb.scan_results

    def scan_and_try_the_lock(*args: Any, **kwargs: Any) -> Any:
        other = sqlite3.connect(db, timeout=0)  # another command's write, waiting for nothing
        try:
            other.execute("BEGIN IMMEDIATE")
            other.rollback()
            writable.append(True)
        except sqlite3.OperationalError:  # "database is locked"
            writable.append(False)
        finally:
            other.close()
        return scan(*args, **kwargs)

    def lock_then_remove(s: Any, name: str) -> None:
        if table.exists():
            table.rename(tmp_path / "elsewhere.csv")  # nothing in the transaction reads it
        lock(s, name)

    lock = kb.lock_name
    monkeypatch.setattr(kb, "scan_results", scan_and_try_the_lock)
    monkeypatch.setattr(kb, "lock_name", lock_then_remove)
    report = kb.import_table(reg, table, "t", meta_path=meta)
    assert writable == [True], writable  # one reading, with the registry free to write
    assert report.n_results == 40 and _results(reg) == {"t": 40}
    with reg.session() as s:
        lines = sorted(s.scalars(select(KbResult.line)))
    assert lines == list(range(2, 42))  # every row as validated, each once


def test_a_temporary_folder_without_room_for_the_rows_is_one_error(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checked rows wait on disk for the transaction (a temporary file of its own): a
    full temporary folder is one line naming the file, the folder and TMPDIR."""
    table, meta = _files(tmp_path, 2, 2)

    def full(*args: Any, **kwargs: Any) -> NoReturn:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    with pytest.raises(StorageError) as err:
        kb.import_table(registry, table, "t", meta_path=meta)
    msg = str(err.value)
    assert msg.startswith(f"{table}: its validated rows cannot be kept in the temporary "), msg
    assert "set TMPDIR to a folder with room" in msg and "nothing was imported" in msg, msg
    assert _results(registry) == {}


def test_a_meta_file_that_cannot_be_read_says_what_was_expected_and_that_nothing_was_imported(
    registry: Registry, tmp_path: Path
) -> None:
    """`--meta missing.csv` ended in "missing.csv: cannot be read (No such file or
    directory)": neither what was expected nor that nothing was imported (the results file's
    own errors say both)."""
    table, _ = _files(tmp_path, 2, 2)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(META_HEADER.encode() + "d\xe9,binary,1,2,100\n".encode("latin-1"))
    with pytest.raises(NotFoundError) as missing:
        kb.import_table(registry, table, "t", meta_path=tmp_path / "missing.csv")
    said = f"{tmp_path / 'missing.csv'}: no such file; expected a CSV file; nothing was imported"
    assert str(missing.value) == said, missing.value
    with pytest.raises(InputError) as err:
        kb.import_table(registry, table, "t", meta_path=latin)
    msg = str(err.value)
    assert msg.startswith(f"{latin}: not UTF-8 text ("), msg
    assert msg.endswith("; expected a readable UTF-8 CSV file; nothing was imported"), msg
    assert _results(registry) == {}
