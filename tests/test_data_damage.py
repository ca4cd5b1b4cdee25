"""Damaged stores are not used silently: a byte flipped in one chunk (Blosc-zstd decodes it
without error) stops every reader with one line naming dataset, version, chunk and
`pomlia data verify`; `fingerprint train`, `fingerprint extract` and `automl run` exit non-zero
and nothing trained on the damage is registered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pomlia_hpc.automl import records
from pomlia_hpc.cli import app
from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import DataIntegrityError, PomliaError
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import FAST, make_encoder, tiny_dataset, tiny_task, warm_file

pytestmark = pytest.mark.usefixtures("wide_console")


def chunk_files(store_path: str | Path) -> list[Path]:
    """The image chunk files of a store, in chunk order."""
    root = Path(store_path) / "images" / "c"
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: int(p.parts[-4]))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def damaged(ws: Workspace, reg: Registry, name: str = "blood", **kw: object) -> str:
    """Ingest a tiny look-alike as ``name`` and flip one byte in its (only) image chunk."""
    ref = tiny_dataset(ws, reg, name, **kw)  # type: ignore[arg-type]
    (chunk,) = chunk_files(find_version(reg, ref).store_path)
    flip_byte(chunk)
    return ref


def run(*args: str) -> tuple[int, str]:
    """Exit code and output of ``pomlia ARGS``; a PomliaError is what ``main`` prints as one
    line with its exit code."""
    out = CliRunner().invoke(app, list(args))
    if isinstance(out.exception, PomliaError):
        return out.exception.exit_code, str(out.exception)
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        raise AssertionError(f"crashed: {out.exception!r}\n{out.output}")
    return out.exit_code, " ".join(out.output.split())


def assert_names_the_damage(text: str, ref: str, chunk: int = 0) -> None:
    name, version = ref.split("@")
    assert f"dataset '{name}' version '{version}'" in text, text
    assert f"image chunk {chunk} " in text and f"pomlia data verify {ref}" in text, text


def test_a_flipped_byte_stops_every_read_of_its_chunk(workspace: Workspace, reg: Registry) -> None:
    ref = tiny_dataset(workspace, reg, "blood", sizes=(300, 20, 20))
    path = find_version(reg, ref).store_path
    good = open_store(path).read_rows(0, 340)
    flip_byte(chunk_files(path)[0])
    for lo, hi in ((0, 340), (5, 6), (339, 340)):  # whole chunk, one row, the last row
        with pytest.raises(DataIntegrityError) as info:
            open_store(path).read_rows(lo, hi)
        assert_names_the_damage(str(info.value), ref)
        assert "\n" not in str(info.value)
    # Checking can be switched off (data verify reads the raw chunks itself).
    assert not np.array_equal(open_store(path, verify=False).read_rows(0, 340), good)


def test_chunks_are_checked_once_per_store_and_good_ones_pass(
    workspace: Workspace, reg: Registry
) -> None:
    from pomlia_hpc.data.api import ingest
    from tests.fixtures.factories import write_npz

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5000, 28, 28, 3), dtype=np.uint8)  # chunks of 2048 rows
    p = write_npz(
        workspace.tmp / "big.npz", {"train_images": x, "train_labels": np.arange(5000) % 3}
    )
    rec = ingest(workspace, reg, "big", p)
    store = open_store(rec.store_path)
    np.testing.assert_array_equal(store.read_rows(2040, 2050), x[2040:2050])  # two chunks
    assert store.verified_chunks == {0, 1}
    flip_byte(chunk_files(rec.store_path)[2])
    np.testing.assert_array_equal(store.read_rows(0, 4096), x[:4096])
    with pytest.raises(DataIntegrityError, match=r"image chunk 2 \(rows 4096..4999\)"):
        store.read_rows(4500, 4501)


def test_an_undecodable_chunk_and_damaged_labels(workspace: Workspace, reg: Registry) -> None:
    ref = tiny_dataset(workspace, reg, "blood")
    path = find_version(reg, ref).store_path
    (chunk,) = chunk_files(path)
    chunk.write_bytes(chunk.read_bytes()[:40])  # cut: Blosc cannot decode it
    with pytest.raises(DataIntegrityError) as info:
        open_store(path).read_rows(0, 1)
    assert "cannot be decoded" in str(info.value) and f"pomlia data verify {ref}" in str(info.value)
    import zarr

    labels = zarr.open_array(f"{path}/labels", mode="r+")
    y = np.asarray(labels[:])
    y[3, 0] = (y[3, 0] + 1) % 8
    labels[:] = y  # a rewritten label: decodes, but its hash differs
    with pytest.raises(DataIntegrityError, match=r"the labels .* differ from the hash"):
        open_store(path).read_labels(0, 10)


@pytest.mark.slow
@pytest.mark.usefixtures("restore_torch_threads")  # the jobs run in this process
def test_fingerprint_train_and_extract_exit_nonzero_on_a_damaged_chunk(
    workspace: Workspace, reg: Registry
) -> None:
    # What the commands say is under test, not the job process (a failed extraction through a
    # job process: tests/test_fingerprint_extract.py): the jobs run in this process, and a
    # failure there becomes the job's outcome as a job process's does.
    ref = damaged(workspace, reg)
    code, text = run(
        "--cluster", "debug", "fingerprint", "train", "-n", "ae", "blood", "-d", "2",
        "--epochs", "1", "--batch-size", "16", "--max-images", "32", "--workers", "0",
    )  # fmt: skip
    assert code != 0, text
    assert_names_the_damage(text, ref)
    assert "Traceback" not in text
    make_encoder(workspace, reg, "enc")
    code, text = run("--cluster", "debug", "fingerprint", "extract", "-e", "enc", "blood")
    assert code != 0, text
    assert_names_the_damage(text, ref)
    assert "same command again" not in text  # it would fail the same way


@pytest.mark.slow
def test_automl_run_stops_and_registers_nothing_on_a_damaged_chunk(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(32, 8, 8))
    ref = find_version(reg, "blood_data").version
    (chunk,) = chunk_files(find_version(reg, "blood_data").store_path)
    flip_byte(chunk)
    warm = warm_file(tmp_path / "warm.yaml", [FAST])
    code, text = run(
        "automl", "run", "blood", "--trials", "3", "--parallel", "1", "--max-epochs", "1",
        "--optimizer", "random",
        "--archs", "small_cnn", "--initial", str(warm), "--study", "s", "--executor", "local",
    )  # fmt: skip
    assert code != 0, text
    assert_names_the_damage(text, f"blood_data@{ref}")
    runs = records.study_runs(reg, "s")
    assert len(runs) == 1 and runs[0].status == records.CRASHED  # stopped at the first of 3
    code, listing = run("model", "list")
    assert "blood" not in listing.replace("blood_data", "")
