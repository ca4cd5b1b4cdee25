"""Sharded extraction: aligned shard plans, local array jobs, skipping finished shards, and a
shard killed with SIGKILL mid-write giving bitwise identical embeddings once re-run."""

from __future__ import annotations

import importlib
import itertools
import json
import re
import signal
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from sqlalchemy import select

from pomlia_hpc.cluster import Executor
from pomlia_hpc.data.store import open_version
from pomlia_hpc.errors import (
    DataIntegrityError,
    InputError,
    NotFoundError,
    PomliaError,
)
from pomlia_hpc.fingerprint import shards
from pomlia_hpc.fingerprint.candidates import fingerprint_set
from pomlia_hpc.fingerprint.extract import (
    extract,
    finish_extraction,
    group_shards,
    plan_extraction,
    run_shards,
)
from pomlia_hpc.fingerprint.layout import plan_shards
from pomlia_hpc.fingerprint.shards import embed_images, marker, read_embeddings, run_shard, tiles
from pomlia_hpc.fingerprint.train import load_encoder
from pomlia_hpc.registry import FingerprintSet, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder

pytestmark = pytest.mark.usefixtures("restore_torch_threads")
# The module that plans an extraction (where the spy below replaces create_embeddings).
planning_module = importlib.import_module("pomlia_hpc.fingerprint.planning")


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def _chunk_files(out: Path) -> list[Path]:
    return [p for p in (out / "z").rglob("*") if p.is_file() and p.name != "zarr.json"]


def test_shard_plan_is_chunk_aligned_and_covers_all_rows(
    workspace: Workspace, reg: Registry
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(50, 10, 23), chunk_rows=16)  # 83 rows
    store = open_version(reg, ref)
    for n_shards in (1, 2, 3, 5, 6, 100):
        plan = plan_shards(store, n_shards, None)
        assert plan[0][0] == 0 and plan[-1][1] == 83
        assert all(b == c for (_, b), (c, _) in itertools.pairwise(plan))
        assert all(a % 16 == 0 for a, _ in plan)  # starts on chunk boundaries
        assert len(plan) == min(n_shards, 6)  # never more shards than chunks
    assert len(plan_shards(store, None, 32)) == 3  # about 32 rows per shard


def test_small_shards_are_packed_into_tasks(workspace: Workspace, reg: Registry) -> None:
    refs = [
        make_dataset(workspace, reg, f"d{i}", sizes=(20 + 10 * i, 4, 4), chunk_rows=8)
        for i in range(4)
    ]  # 28, 38, 48, 58 rows
    make_encoder(workspace, reg, "enc")
    specs = plan_extraction(reg, workspace, "enc", refs).specs
    assert len(specs) == 4  # one shard per small dataset
    tasks = group_shards(specs, 100)
    assert [[s.stop for s in t] for t in tasks] == [[28, 38], [48], [58]]
    assert group_shards(specs, None) == [[s] for s in specs]


def test_local_array_extraction_matches_in_memory_embedding(
    workspace: Workspace, reg: Registry
) -> None:
    a = make_dataset(workspace, reg, "blood", "bloodmnist", (40, 8, 16), chunk_rows=16)
    b = make_dataset(workspace, reg, "breast", "breastmnist", (10, 2, 4), chunk_rows=32)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    # Shards of about 48 rows: blood's 64 rows (4 chunks) make 2 shards of 32, breast's 16 (a
    # part of one chunk) one shard, packed beside blood's second: 2 array tasks at once, one
    # wave of job processes (each costs a process start with torch), one of them writing into
    # two data sets' embeddings.
    ex = Executor.from_profile("local", workspace.jobs, reg, max_parallel=2)
    seen: list[tuple[int, int]] = []
    results = extract(
        reg,
        workspace,
        "enc",
        [a, b],
        executor=ex,
        shard_rows=48,
        threads=1,
        batch_size=8,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert [(r.n_vectors, r.shards, r.shards_run, r.status) for r in results] == [
        (64, 2, 2, "complete"),
        (16, 1, 1, "complete"),
    ]
    assert seen[-1] == (2, 2)
    model, _cfg = load_encoder(reg, "enc")
    torch.set_num_threads(1)
    for ref, res in zip((a, b), results, strict=True):
        store = open_version(reg, ref)
        with reg.session() as s:
            fs = s.get(FingerprintSet, res.fingerprint_set_id)
            assert fs is not None
        z = read_embeddings(fs.embeddings_path)
        assert z.shape == (store.n_images, 4) and np.isfinite(z).all()
        # Chunk by chunk, in batches from each chunk's start: what the shards do.
        expected = np.concatenate(
            [
                embed_images(model, store.read_rows(lo, hi), 8, torch.device("cpu"))
                for lo, hi in store.chunk_ranges()
            ]
        )
        np.testing.assert_array_equal(_bits(z), _bits(expected))
        np.testing.assert_allclose(fs.mean, z.astype(np.float64).mean(0), rtol=1e-6)
        assert (fs.status, fs.n_vectors) == ("complete", store.n_images)

    # Everything done: a second run submits nothing.
    again = extract(reg, workspace, "enc", [a, b], executor=ex, shards=5)
    assert [r.shards_run for r in again] == [0, 0]


def test_shard_killed_part_way_reruns_to_bitwise_identical_embeddings(
    workspace: Workspace, reg: Registry
) -> None:
    # Many small chunks (8 rows; 18, 6 a shard): the shard dies after 3 of its chunks, between
    # two writes (a chunk torn mid-write: the next test).
    ref = make_dataset(workspace, reg, "organ", "organamnist", (96, 16, 32), chunk_rows=8)
    make_encoder(workspace, reg, "enc", latent_dim=8)
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=3, threads=1, batch_size=8)
    victim = plan.specs[1]
    out = Path(victim.out_path)
    # The shard kills itself when it starts its 4th chunk (3 written), as if the node died:
    # a kill from the test could come too late on a fast machine.
    script = (
        "import json, os, signal, sys\n"
        "from pomlia_hpc.fingerprint import shards\n"
        "embed, calls = shards.embed_images, []\n"
        "def dying(*args, **kw):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return embed(*args, **kw)\n"
        "shards.embed_images = dying\n"
        "shards.run_shard(shards.ShardSpec(**json.loads(sys.argv[1])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(asdict(victim))], timeout=300, check=False
    )
    assert proc.returncode == -signal.SIGKILL
    assert not marker(out, 1).exists()
    n_chunks_shard = (victim.stop - victim.start) // 8
    assert 0 < len(_chunk_files(out)) < n_chunks_shard  # killed part-way

    # Run again (in this process: the array-job path is covered above) ...
    again = plan_extraction(reg, workspace, "enc", [ref], shards=3, threads=1, batch_size=8)
    assert [s.shard for s in again.specs] == [0, 1, 2]
    for spec in again.specs:
        run_shard(spec)
    (res,) = finish_extraction(reg, again)
    assert res.status == "complete"
    resumed = read_embeddings(out)
    # ... and compare with an uninterrupted run from scratch.
    fresh = plan_extraction(
        reg, workspace, "enc", [ref], shards=3, threads=1, batch_size=8, force=True
    )
    assert not _chunk_files(out)
    for spec in fresh.specs:
        run_shard(spec)
    np.testing.assert_array_equal(_bits(read_embeddings(out)), _bits(resumed))


def test_rerun_repairs_a_torn_chunk_and_skips_done_shards(
    workspace: Workspace, reg: Registry
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(40, 8, 16), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=2, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    out = Path(plan.specs[0].out_path)
    good = read_embeddings(out)
    # What a kill during a chunk write can leave: no .done file and a truncated chunk file.
    marker(out, 1).unlink()
    chunk = sorted(_chunk_files(out))[-1]
    chunk.write_bytes(chunk.read_bytes()[:7])
    with pytest.raises(Exception):  # noqa: B017  (the codec's error type is not ours)
        read_embeddings(out)
    done_before = marker(out, 0).stat().st_mtime_ns
    plan2 = plan_extraction(reg, workspace, "enc", [ref], shards=5, threads=1)
    assert [s.shard for s in plan2.specs] == [1]  # the stored plan wins; shard 0 is skipped
    run_shard(plan2.specs[0])
    assert marker(out, 0).stat().st_mtime_ns == done_before
    np.testing.assert_array_equal(_bits(read_embeddings(out)), _bits(good))


def test_a_shard_reports_its_progress_in_its_output(
    workspace: Workspace,
    reg: Registry,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An array task's output file shows how far a long shard has got, chunk by chunk."""
    ref = make_dataset(workspace, reg, "blood", sizes=(40, 4, 8), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=1, threads=1)
    monkeypatch.setattr(shards, "PROGRESS_EVERY_S", 0.0)  # a line per chunk of 16 rows
    run_shard(plan.specs[0])
    lines = [ln.split("] ", 1)[1] for ln in capsys.readouterr().out.splitlines()]
    name = plan.specs[0].name  # the data set and version: a task may run several data sets
    assert name.endswith(" shard 0") and name.startswith("blood/")
    assert re.fullmatch(rf"{re.escape(name)}: embedding rows \[0, 52\) on (cpu|cuda\S*)", lines[0])
    assert [ln.split(" (")[0] for ln in lines[1:]] == [
        f"{name}: 16/52 rows",
        f"{name}: 32/52 rows",
        f"{name}: 48/52 rows",
        f"{name}: 52/52 rows",
    ]
    monkeypatch.setattr(shards, "PROGRESS_EVERY_S", 3600.0)  # a long shard: first and last only
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=1, threads=1, force=True)
    run_shard(plan.specs[0])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "16/52" in lines[1] and "52/52" in lines[2], lines


def test_patch_embeddings(workspace: Workspace, reg: Registry) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=1, patch_grid=2, threads=1)
    run_shard(plan.specs[0])
    patches = np.asarray(zarr.open_group(plan.specs[0].out_path, mode="r")["patches"][:])
    assert patches.shape == (32, 4, 4) and np.isfinite(patches).all()
    images = open_version(reg, ref).read_rows(0, 2)
    t = tiles(images, 2)
    assert t.shape == (8, 14, 14, 3)
    np.testing.assert_array_equal(t[1], images[0, :14, 14:])  # row-major: tile 1 = top right


def test_bad_inputs(workspace: Workspace, reg: Registry) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8))
    with pytest.raises(NotFoundError, match="encoder 'nope' not found; known:"):
        extract(reg, workspace, "nope", [ref])
    make_encoder(workspace, reg, "enc")
    with pytest.raises(NotFoundError, match="dataset 'missing' not found; known:"):
        extract(reg, workspace, "enc", ["missing"])
    with pytest.raises(InputError, match="--patch-grid 0 for"):
        extract(reg, workspace, "enc", [ref], patch_grid=0)
    with pytest.raises(InputError, match="no datasets given"):
        extract(reg, workspace, "enc", [])
    with pytest.raises(InputError, match=r"--shards 0: expected an integer >= 1"):
        extract(reg, workspace, "enc", [ref], shards=0)
    with pytest.raises(InputError, match=r"--shard-rows -5: expected an integer >= 1"):
        extract(reg, workspace, "enc", [ref], shard_rows=-5)
    with pytest.raises(InputError, match=r"--shards 2 and --shard-rows 10: expected at most one"):
        extract(reg, workspace, "enc", [ref], shards=2, shard_rows=10)
    with reg.session() as s:
        assert s.scalars(select(FingerprintSet)).first() is None  # nothing recorded


def _run_all(reg: Registry, workspace: Workspace, ref: str, **kw: object) -> list[int]:
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=2, threads=1, **kw)  # type: ignore[arg-type]
    for spec in plan.specs:
        run_shard(spec)
    assert [r.status for r in finish_extraction(reg, plan)] == ["complete"]
    return [s.shard for s in plan.specs]


def test_retrained_encoder_under_the_same_name_is_extracted_again(
    workspace: Workspace, reg: Registry
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4, seed=0)
    assert _run_all(reg, workspace, ref) == [0, 1]
    fs, _ = fingerprint_set(reg, "enc", ref)
    old = read_embeddings(fs.embeddings_path)
    make_encoder(workspace, reg, "enc", latent_dim=4, seed=1)  # new weights, same shape
    assert _run_all(reg, workspace, ref) == [0, 1]  # not reused: every shard runs again
    new = read_embeddings(fs.embeddings_path)
    model, _cfg = load_encoder(reg, "enc")  # this process's model cache must not serve seed 0
    torch.set_num_threads(1)
    images = open_version(reg, ref).read_rows(0, 32)
    np.testing.assert_array_equal(
        _bits(new), _bits(embed_images(model, images, 256, torch.device("cpu")))
    )
    assert not np.array_equal(old, new)
    assert _run_all(reg, workspace, ref) == []  # unchanged weights: reused


def test_force_marks_the_set_running_before_removing_its_vectors(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    _run_all(reg, workspace, ref)
    seen: list[str] = []
    create = planning_module.create_embeddings

    def spy(*args: object, **kw: object) -> None:
        with reg.session() as s:
            seen.append(s.scalars(select(FingerprintSet.status)).one())
        create(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(planning_module, "create_embeddings", spy)
    plan_extraction(reg, workspace, "enc", [ref], shards=2, force=True)
    assert seen == ["running"]  # already running when the old vectors were removed
    with pytest.raises(NotFoundError, match=r"extraction unfinished \(running, or stopped\)"):
        fingerprint_set(reg, "enc", ref)


def test_done_markers_of_another_plan_do_not_count(workspace: Workspace, reg: Registry) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(40, 8, 16), chunk_rows=16)  # 64 rows
    make_encoder(workspace, reg, "enc", latent_dim=4)
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=2, threads=1)
    assert [(s.start, s.stop) for s in plan.specs] == [(0, 32), (32, 64)]
    run_shard(plan.specs[0])
    out = Path(plan.specs[0].out_path)
    # A marker whose rows are not those of the stored plan (left by an older plan).
    old = {"shard": 1, "start": 48, "stop": 64, "sum": [0.0] * 4, "seconds": 1.0, "host": "h"}
    marker(out, 1).write_text(json.dumps(old))
    (res,) = finish_extraction(reg, plan)
    assert res.status == "failed"
    again = plan_extraction(reg, workspace, "enc", [ref], shards=2, threads=1)
    assert [s.shard for s in again.specs] == [1]
    # A task whose range is not the stored plan's is refused, not run.
    bad = replace(again.specs[0], start=48)
    with pytest.raises(InputError, match=r"asks for rows \[48, 64\) but the stored plan has rows"):
        run_shard(bad)
    run_shard(again.specs[0])
    assert [r.status for r in finish_extraction(reg, again)] == ["complete"]
    assert np.isfinite(read_embeddings(out)).all()


def test_one_failed_shard_does_not_fail_the_others_of_its_task(
    workspace: Workspace, reg: Registry
) -> None:
    a = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8), chunk_rows=16)
    b = make_dataset(workspace, reg, "organ", "organamnist", (20, 4, 8), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    # Damage a chunk of the first dataset: its shard fails when it reads it.
    chunk = sorted(p for p in (open_version(reg, a).path / "images").rglob("*") if p.is_file())
    chunk = [p for p in chunk if p.name != "zarr.json"]
    chunk[0].write_bytes(chunk[0].read_bytes()[:7])
    specs = plan_extraction(reg, workspace, "enc", [a, b], threads=1).specs
    assert len(specs) == 2 and len(group_shards(specs, 1000)) == 1  # one task, two datasets
    with pytest.raises(PomliaError, match=r"1 of 2 shard\(s\) failed: blood/\w+ shard 0: "):
        run_shards(specs)
    assert not marker(specs[0].out_path, 0).exists() and marker(specs[1].out_path, 0).exists()
    # Through the cluster layer, the same one task (one job process): only the failed shard is
    # named; the other dataset completes. The cause is an undecodable chunk, so the error
    # points to `pomlia data verify`, not to running the same command again (which would fail
    # the same way).
    marker(specs[1].out_path, 0).unlink()
    ex = Executor.from_profile("local", workspace.jobs, reg)
    seen: list[tuple[int, int]] = []
    with pytest.raises(
        DataIntegrityError, match=r"^1 extraction shard\(s\) failed \(blood/\w+ shard 0\)"
    ) as info:
        extract(
            reg, workspace, "enc", [a, b], executor=ex, threads=1,
            progress=lambda d, t: seen.append((d, t)),
        )  # fmt: skip
    assert seen[-1] == (0, 1)  # the failed task is not counted as done
    assert "cannot be decoded" in str(info.value) and f"pomlia data verify {a}" in str(info.value)
    assert "same command again" not in str(info.value)
    with reg.session() as s:
        status = dict(s.execute(select(FingerprintSet.id, FingerprintSet.status)).all())
    assert sorted(status.values()) == ["complete", "failed"]


def test_a_rerun_waits_for_the_shard_jobs_of_a_killed_run(
    workspace: Workspace, reg: Registry
) -> None:
    """`fingerprint extract` run again while the shard jobs of the first (SIGKILLed) command ran
    on submitted every shard again: two writers on the same regions. It waits for them now,
    and runs only what they leave undone."""
    from pomlia_hpc.fingerprint.planning import shard_claim
    from pomlia_hpc.registry import Job
    from tests.fixtures import jobfns

    a = make_dataset(workspace, reg, "blood", "bloodmnist", (20, 4, 8), chunk_rows=32)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    # The first command planned and submitted its one shard, then was killed: its job runs on.
    plan = plan_extraction(reg, workspace, "enc", [a], shards=1, threads=1)
    (spec,) = plan.specs
    ex = Executor.from_profile("local", workspace.jobs, reg)
    orphan = ex.submit(
        jobfns.sleep_then_call,
        3.0,
        run_shards,
        [spec],
        name="fingerprint-extract",
        job_meta={"shards": [shard_claim(spec.out_path, spec.shard)]},
    )
    said: list[str] = []
    (res,) = extract(reg, workspace, "enc", [a], executor=ex, shards=1, say=said.append)
    assert (res.status, res.shards_run) == ("complete", 0)  # the orphan's shard, not a second
    assert any(f"job(s) {orphan.record_id} (" in line and "waiting" in line for line in said)
    with reg.session() as s:
        names = [j.name for j in s.scalars(select(Job))]
    assert names == ["fingerprint-extract"]  # nothing submitted beside it


def test_the_wait_for_earlier_shards_gives_up_when_the_scheduler_does_not_answer(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With sacct and squeue failing, the registry's RUNNING stood and the wait for an earlier
    run's shard job polled for good: it now gives up after SHARD_WAIT_UNANSWERED_S seconds
    without an answer, naming the job and `pomlia jobs cancel ID --force`."""
    import os

    from pomlia_hpc.cluster.records import record_submission
    from pomlia_hpc.fingerprint import planning

    a = make_dataset(workspace, reg, "blood", "bloodmnist", (20, 4, 8), chunk_rows=32)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    (spec,) = plan_extraction(reg, workspace, "enc", [a], shards=1, threads=1).specs
    (job,) = record_submission(
        reg,
        backend="slurm",
        scheduler_ids=["424242"],
        name=planning.EXTRACT_JOB_NAME,
        folder=str(tmp_path),
        meta={"shards": [planning.shard_claim(spec.out_path, spec.shard)]},
        started=True,
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sacct", "squeue"):
        (bin_dir / tool).write_text("#!/bin/sh\necho 'slurm_load_jobs error' >&2\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(planning, "SHARD_WAIT_UNANSWERED_S", 0.05)
    with pytest.raises(PomliaError) as err:
        planning.wait_for_earlier_shards(reg, workspace, "enc", [a], poll_s=0.01)
    text = str(err.value)
    assert f"job(s) {job} (" in text and "has not answered" in text, text
    assert f"pomlia jobs cancel {job} --force" in text, text


def test_two_runs_started_at_once_do_not_both_submit(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `fingerprint extract` of the same data started at the same moment both found no
    earlier shard job and both computed every shard into the same stores. Planning and
    submitting is one step per encoder now: the run that comes second waits for the other's
    jobs (here the other submits just after this run's wait found none)."""
    from pomlia_hpc.fingerprint.planning import shard_claim
    from pomlia_hpc.registry import Job
    from tests.fixtures import jobfns

    a = make_dataset(workspace, reg, "blood", "bloodmnist", (20, 4, 8), chunk_rows=32)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    (spec,) = plan_extraction(reg, workspace, "enc", [a], shards=1, threads=1).specs
    ex = Executor.from_profile("local", workspace.jobs, reg)
    extract_module = importlib.import_module("pomlia_hpc.fingerprint.extract")
    real_wait = extract_module.wait_for_earlier_shards
    other: list[int | None] = []

    def wait_then_other_run_submits(*args: object, **kw: object) -> None:
        real_wait(*args, **kw)  # type: ignore[arg-type]
        if not other:  # the other run, started at the same moment, submits its shard now
            job = ex.submit(
                jobfns.sleep_then_call,
                3.0,
                run_shards,
                [spec],
                name="fingerprint-extract",
                job_meta={"shards": [shard_claim(spec.out_path, spec.shard)]},
            )
            other.append(job.record_id)

    monkeypatch.setattr(extract_module, "wait_for_earlier_shards", wait_then_other_run_submits)
    said: list[str] = []
    (res,) = extract(reg, workspace, "enc", [a], executor=ex, shards=1, say=said.append)
    assert (res.status, res.shards_run) == ("complete", 0)  # the other's shard, not a second
    assert any(f"job(s) {other[0]} (" in line and "waiting" in line for line in said), said
    with reg.session() as s:
        names = [j.name for j in s.scalars(select(Job))]
    assert names == ["fingerprint-extract"]  # nothing submitted beside it
