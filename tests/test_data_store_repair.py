"""Stores and versions when things go wrong: re-ingesting identical content repairs a damaged
store, sample grids check chunk hashes, re-adding older content makes it current again, stores
on another file system or a full disk, a file in place of a dataset's folder, and version
lookup by prefix."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest, list_versions, verify
from pomlia_hpc.data.grid import sample_grid
from pomlia_hpc.data.store import compare_digests, find_version, open_store, store_damage
from pomlia_hpc.errors import DataIntegrityError, InputError, NotFoundError
from pomlia_hpc.registry import Dataset, DatasetVersion, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import nothing_visible, tiny_npz

pytestmark = pytest.mark.usefixtures("wide_console")


def chunk_file(store_path: str | Path) -> Path:
    """The (only) image chunk file of a tiny store."""
    (chunk,) = (p for p in (Path(store_path) / "images" / "c").rglob("*") if p.is_file())
    return chunk


def damage(chunk: Path, how: str) -> None:
    if how == "deleted":
        chunk.unlink()
    else:
        with chunk.open("r+b") as f:
            f.truncate(100)


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_reingesting_identical_content_rewrites_a_damaged_store(
    workspace: Workspace, reg: Registry, tmp_path: Path, how: str
) -> None:
    npz = tiny_npz(tmp_path / "b.npz", sizes=(40, 10, 10))
    first = ingest(workspace, reg, "blood", npz)
    again = ingest(workspace, reg, "blood", npz)
    assert not again.created and again.repaired == ()  # a sound store is checked, kept
    damage(chunk_file(first.store_path), how)
    assert not verify(reg, "blood")[0].ok
    fixed = ingest(workspace, reg, "blood", npz)
    assert not fixed.created and fixed.version == first.version
    assert fixed.repaired and "chunk" in fixed.repaired[0]
    assert verify(reg, "blood")[0].ok
    store = open_store(fixed.store_path)  # the registered metadata and fingerprint, as before
    assert store.meta == find_version(reg, "blood").meta and store.fingerprint == first.fingerprint
    assert nothing_visible(workspace, "other")


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_sample_grid_of_a_damaged_store_is_one_integrity_error(
    workspace: Workspace, reg: Registry, tmp_path: Path, how: str
) -> None:
    rec = ingest(workspace, reg, "blood", tiny_npz(tmp_path / "b.npz", sizes=(40, 10, 10)))
    sample_grid(open_store(rec.store_path), tmp_path / "good.png")
    damage(chunk_file(rec.store_path), how)
    with pytest.raises(DataIntegrityError) as info:
        sample_grid(open_store(rec.store_path), tmp_path / "bad.png")
    assert f"pomlia data verify blood@{rec.version}" in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "bad.png").exists()


def test_readding_older_content_makes_it_what_the_name_means(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    full = tiny_npz(tmp_path / "a.npz", sizes=(40, 10, 10))
    fewer = tiny_npz(tmp_path / "b.npz", sizes=(39, 10, 10))
    a = ingest(workspace, reg, "rv", full)
    b = ingest(workspace, reg, "rv", fewer)
    assert find_version(reg, "rv").version == b.version
    again = ingest(workspace, reg, "rv", full)
    assert not again.created and again.version == a.version and again.was_current == b.version
    assert find_version(reg, "rv").version == a.version
    assert [v.version for v in list_versions(reg, "rv") if v.current] == [a.version]
    assert find_version(reg, f"rv@{b.version}").version == b.version
    c = ingest(workspace, reg, "rv", tiny_npz(tmp_path / "c.npz", sizes=(38, 10, 10)))
    assert c.parent == a.version and find_version(reg, "rv").version == c.version
    out = CliRunner().invoke(app, ["data", "add", "rv", str(fewer)])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert f"'rv' now means this version again (it meant rv@{c.version}" in text


def test_a_dataset_folder_on_another_file_system_is_published_by_a_copy(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = Path.rename

    def rename(self: Path, target: str | Path) -> Path:
        if self.parent.name.startswith(".ingest-"):  # the staged store: another device
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    rec = ingest(workspace, reg, "xdev", tiny_npz(tmp_path / "x.npz", sizes=(40, 10, 10)))
    assert rec.created and verify(reg, "xdev")[0].ok
    assert [p.name for p in (workspace.stores / "xdev").iterdir()] == [rec.store_path.name]
    assert nothing_visible(workspace, "other")


def test_a_full_disk_is_one_line_and_leaves_nothing(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    npz = tiny_npz(tmp_path / "f.npz", sizes=(40, 10, 10))
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(InputError) as info:
        ingest(workspace, reg, "full", npz)
    text = str(info.value)
    assert "no space left" in text and str(workspace.stores) in text and "MB free" in text
    assert "MB (uncompressed)" in text and "\n" not in text
    assert nothing_visible(workspace, "full")
    with reg.session() as s:
        assert s.query(DatasetVersion).count() == 0


def test_a_file_in_place_of_the_dataset_folder_is_refused(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    workspace.stores.mkdir(parents=True, exist_ok=True)
    (workspace.stores / "fz").write_text("keep me")
    with pytest.raises(InputError) as info:
        ingest(workspace, reg, "fz", tiny_npz(tmp_path / "f.npz", sizes=(40, 10, 10)))
    assert f"'{workspace.stores / 'fz'}' is a file, not a folder" in str(info.value)
    assert (workspace.stores / "fz").read_text() == "keep me"
    assert not list(workspace.stores.glob(".*"))


def test_version_lookup_by_prefix_case_and_empty(workspace: Workspace, reg: Registry) -> None:
    with reg.session() as s:
        ds = Dataset(name="f3")
        s.add(ds)
        s.flush()
        for v in ("03ee7bf20ba0b1b2", "03ab000000000000", "ff00000000000000"):
            s.add(DatasetVersion(dataset_id=ds.id, version=v, store_path="/x"))
    with pytest.raises(NotFoundError) as info:
        find_version(reg, "f3@03")
    assert "03ee7bf20ba0b1b2" in str(info.value) and "ambiguous" in str(info.value)
    assert "ff00000000000000" not in str(info.value)
    assert find_version(reg, "f3@03EE").version == "03ee7bf20ba0b1b2"
    with pytest.raises(InputError, match="expected a version"):
        find_version(reg, "f3@")
    assert find_version(reg, "f3").version == "ff00000000000000"


def test_staging_is_beside_the_stores(workspace: Workspace, reg: Registry, tmp_path: Path) -> None:
    seen: list[Path] = []
    npz = tiny_npz(tmp_path / "h.npz", sizes=(40, 10, 10))
    stage = workspace.stores
    ingest(workspace, reg, "here", npz, progress=lambda *_: seen.extend(stage.glob(".i*")))
    assert seen and nothing_visible(workspace, "other")


def test_verify_and_repair_find_damage_with_one_check(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`data verify` and the repair of a re-ingest use one comparison with the ingest digests:
    a truncated image chunk and truncated labels are found by both, in their own words."""
    rec = ingest(workspace, reg, "blood", tiny_npz(tmp_path / "b.npz", sizes=(40, 10, 10)))
    digests = find_version(reg, "blood").meta["chunk_hashes"]
    assert compare_digests(open_store(rec.store_path), digests).damaged_chunks == []
    damage(chunk_file(rec.store_path), "truncated")
    (labels,) = (p for p in (Path(rec.store_path) / "labels").rglob("c/**/*") if p.is_file())
    labels.write_bytes(labels.read_bytes()[:3])
    seen: list[tuple[int, int]] = []
    found = compare_digests(
        open_store(rec.store_path), digests, lambda lo, hi: seen.append((lo, hi))
    )
    assert found.damaged_chunks == [0] and found.damaged_arrays == ["labels"]
    assert seen == [(0, 60)]
    assert store_damage(rec.store_path, digests) == ["damaged image chunk(s) 0", "damaged labels"]
    problems = verify(reg, "blood")[0].problems
    assert problems[0].startswith("1 damaged image chunk(s): 0 ")
    assert problems[1:] == ["array 'labels' is damaged (hash differs)"]


def test_a_readd_reports_the_store_check_in_a_batch_jobs_output(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """Re-adding identical content reads the whole store back (the repair check): minutes of
    silence on a large store, in a terminal and in a Slurm output file alike. It now reports
    like the other stages of `data add`: time-stamped lines when stdout is a file."""
    npz = tiny_npz(tmp_path / "b.npz", sizes=(40, 10, 10))
    ingest(workspace, reg, "blood", npz)
    calls: list[tuple[str, int, int]] = []
    ingest(workspace, reg, "blood", npz, progress=lambda *a: calls.append(a))
    checked = [c for c in calls if c[0] == "check store"]
    assert checked and sum(c[1] for c in checked) == 60 and {c[2] for c in checked} == {60}
    out = tmp_path / "slurm-1.out"  # stdout a file, as sbatch makes it: not a terminal
    with out.open("w") as f:
        subprocess.run(
            [sys.executable, "-m", "pomlia_hpc", "data", "add", "blood", str(npz)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            check=True,
        )
    text = out.read_text()
    first, last = "check store: 0/60 images (0%)", "check store: 60/60 images (100%)"
    assert first in text and last in text, text
    assert text.index(last) < text.index("identical content: existing version"), text
    assert re.search(r"^\[\d\d:\d\d:\d\d\] check store: 60/60 images", text, re.M), text
