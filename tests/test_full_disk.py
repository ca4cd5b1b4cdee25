"""A file system that will not take what a command writes: the file-size limit (RLIMIT_FSIZE,
EFBIG; Python ignores SIGXFSZ) stands in for a full disk, as it needs no root and no mount, and
every writer sees it as a failed write. Each command must say so in one line naming the path,
exit non-zero, leave nothing half-written visible, and succeed once the limit is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import REPO, cli_ok
from tests.fixtures.factories import donor_model, make_dataset, make_encoder, tiny_dataset
from tests.monitor_support import demo_model


def pomlia_limited(
    *args: str, env: dict[str, str] | None = None, max_file_bytes: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``pomlia ARGS...`` in its own process whose files may not grow past ``max_file_bytes``
    (None: no limit). It writes no bytecode: Python's cache writer does not check for a short
    write, and a module's ``.pyc`` cut at the limit would break every later import of it."""
    limit = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes},) * 2); "
        "os.execv(sys.executable, sys.argv[1:])"
    )
    prefix = [sys.executable, "-c", limit] if max_file_bytes is not None else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "pomlia_hpc", *args],
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PATH": "/usr/bin:/bin",
            "COLUMNS": "1000",
            **(env or {}),
        },
        timeout=300,
        check=False,
    )


def pomlia_here(*args: str, env: dict[str, str] | None = None) -> None:
    """``pomlia ARGS...`` in this process, with no size limit and only ``env`` of pomlia's
    variables set; fails the test unless it exits 0. For a run whose process is not what is
    checked (the one after the limit is gone): a command of its own costs seconds of imports."""
    unset: dict[str, str | None] = dict.fromkeys(("POMLIA_HOME", "POMLIA_DB_URL", "POMLIA_CLUSTER"))
    cli_ok(*args, env={**unset, **(env or {})})


def one_error_line(res: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The command's error line, after checking it failed (exit ``code``) with exactly one and
    no traceback."""
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr and len(errors) == 1, res.stderr[-3000:]
    return errors[0]


def pg_workspace(home: Path, pg_url: str) -> tuple[Workspace, Registry, dict[str, str]]:
    """A workspace whose registry is on PostgreSQL (so that a size limit meets the command's
    own files only, not SQLite's), and the environment that selects it."""
    ws = Workspace(home=home, db_url=pg_url, cluster_profile="local")
    ws.create()
    return ws, Registry.open(pg_url), {"POMLIA_HOME": str(home), "POMLIA_DB_URL": pg_url}


def hidden(folder: Path) -> list[Path]:
    """Temporary (dot) files and folders left anywhere under ``folder``."""
    return [p for p in folder.rglob(".*")]


def test_data_synth_past_the_size_limit_is_one_line(tmp_path: Path) -> None:
    """`data synth` on a full disk printed the writer's traceback."""
    out = tmp_path / "synth"
    args = ("data", "synth", str(out), "--flags", "breastmnist", "--scale", "0.5")
    line = one_error_line(pomlia_limited(*args, max_file_bytes=64 * 1024))
    assert f"file too large at {out / 'breastmnist.npz'}" in line, line
    assert "nothing of it was kept" in line and "run the same command again" in line, line
    assert not out.exists() or not list(out.iterdir())
    pomlia_here(*args)
    assert [p.name for p in out.iterdir()] == ["breastmnist.npz"]


@pytest.mark.postgres
def test_model_export_past_the_size_limit_is_one_line(tmp_path: Path, pg_url: str) -> None:
    """`model export` on a full disk died by SIGABRT (torch's archive writer, given a path,
    throws from a destructor) after a traceback; the registry is on PostgreSQL here, so that
    the size limit meets the bundle's files only."""
    home = tmp_path / "home"
    ws, reg, env = pg_workspace(home, pg_url)
    donor_model(ws, reg)
    reg.dispose()
    bundles = home / "models" / "donor" / "bundles"
    res = pomlia_limited("model", "export", "donor", env=env, max_file_bytes=64 * 1024)
    line = one_error_line(res)
    assert line.startswith(f"error: file too large at {bundles}/"), line
    assert "nothing of it was kept" in line, line
    assert not bundles.exists() or not list(bundles.iterdir()), hidden(home)
    assert hidden(home) == []
    pomlia_here("model", "export", "donor", env=env)
    (bundle,) = bundles.iterdir()
    assert (bundle / "card.json").is_file() and (bundle / "model.pt2").is_file()


@pytest.mark.postgres
def test_index_build_past_the_size_limit_is_one_line(tmp_path: Path, pg_url: str) -> None:
    """`index build` on a full disk printed faiss's traceback (a RuntimeError whose text alone
    says "No space left on device"); nothing of the generation may stay, and `current` is not
    made."""
    from pomlia_hpc.fingerprint.extract import finish_extraction, plan_extraction
    from pomlia_hpc.fingerprint.shards import run_shard

    home = tmp_path / "home"
    ws, reg, env = pg_workspace(home, pg_url)
    refs = [make_dataset(ws, reg, "blood", "bloodmnist", (30, 6, 12))]
    make_encoder(ws, reg, "enc", latent_dim=512)  # 48 vectors: a 96 KiB index
    plan = plan_extraction(reg, ws, "enc", refs, shards=1, threads=1, patch_grid=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    reg.dispose()
    root = home / "indexes" / "enc" / "images"
    res = pomlia_limited("index", "build", "-e", "enc", env=env, max_file_bytes=32 * 1024)
    line = one_error_line(res)
    assert line == (
        f"error: file too large at {root} (over the file-size limit, `ulimit -f`): nothing of "
        "it was kept; raise the limit and run the same command again"
    ), line
    assert not root.exists() or list(root.iterdir()) == []
    pomlia_here("index", "build", "-e", "enc", env=env)
    assert (root / "current" / "index.faiss").is_file()


@pytest.mark.slurm
@pytest.mark.postgres
def test_monitor_schedule_past_the_size_limit_leaves_no_half_script(
    tmp_path: Path, pg_url: str
) -> None:
    """`monitor schedule` copied the chain's script straight to its final name: on a full disk
    a cut `monitor.sbatch` stayed beside the new settings, for a running chain's next job to
    resubmit. The script is written whole or not at all, and the settings go with it."""
    home = tmp_path / "home"
    ws, reg, env = pg_workspace(home, pg_url)
    demo_model(reg, ws, n_ref=50)
    reg.dispose()
    folder = home / "jobs" / "monitor" / "blood"
    env["POMLIA_CLUSTER"] = "slurm-local"
    # the settings (under 1 KiB) fit, the script (3 KiB) does not
    res = pomlia_limited("monitor", "schedule", "blood", env=env, max_file_bytes=2048)
    line = one_error_line(res)
    assert f"file too large at {folder / 'monitor.sbatch'} " in line, line
    assert not (folder / "monitor.sbatch").exists() and not (folder / "schedule.env").exists()
    assert hidden(home / "jobs") == []


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own (root only: CI runs as root), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill ``folder``'s file system up to ``leave`` bytes free; returns the filler file."""
    filler = folder / "filler"
    with filler.open("ab") as f:
        f.write(bytes(max(0, shutil.disk_usage(folder).free - leave)))
    return filler


def test_a_sqlite_registry_on_a_full_disk_says_so(small_fs: Path) -> None:
    """SQLite on a full disk said only "disk I/O error" (with "expected a reachable server")
    or "database or disk is full", naming neither the folder nor the cause."""
    home = small_fs / "home"
    env = {"POMLIA_HOME": str(home)}
    # `pomlia init` and `data add` (in this process, closed again: as after their commands)
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    tiny_dataset(ws, reg, "blood", sizes=(40, 7, 13))
    reg.dispose()
    filler = fill(small_fs, 32 * 1024)  # room to open, none for the new rows' pages
    task = ("task", "add", "t", "--dataset", "blood", "--metric", "acc")
    full = one_error_line(pomlia_limited(*task, env=env))  # a StorageError's status, 2
    assert full.startswith("error: registry database error: database or disk is full: ")
    assert f"no space left on device at {home} (" in full, full
    filler = fill(small_fs, 0)  # not even room for SQLite's shared-memory file
    line = one_error_line(pomlia_limited(*task, env=env))
    assert "cannot open the database (disk I/O error): no space left on device at" in line, line
    filler.unlink()
    pomlia_here(*task, env=env)  # room again: it adds the task


@pytest.mark.postgres
@pytest.mark.usefixtures("restore_torch_threads")  # the training after, in this process
def test_an_epoch_checkpoint_past_the_size_limit_is_one_line(tmp_path: Path, pg_url: str) -> None:
    """An encoder training whose DeepSpeed epoch checkpoint (134 MiB: weights and Adam's two
    moments) met a full disk failed as "internal error" with torch's "unexpected pos ... vs
    ..." (its C++ writer, given a path, drops the errno) and left the cut checkpoint file. The
    job now says so in one line naming the checkpoint, and removes the part it wrote."""
    home = tmp_path / "home"
    ws, reg, env = pg_workspace(home, pg_url)
    make_dataset(ws, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    reg.dispose()
    env["POMLIA_CLUSTER"] = "local"  # the job is a process of its own, under the same limit
    train = ("fingerprint", "train", "blood", "-n", "ae", "-d", "2", "--epochs", "1")
    small = ("--batch-size", "16", "--workers", "0", "--max-images", "32")
    out = home / "models" / "encoders" / "ae"
    res = pomlia_limited(*train, *small, env=env, max_file_bytes=64 * 2**20)
    line = one_error_line(res)
    assert f"file too large at {out / 'checkpoints' / 'epoch-0001'} " in line, line
    assert "nothing of it was kept" in line, line
    assert not [p for p in (out / "checkpoints").rglob("*") if p.is_file()]
    assert not (out / "latest.json").exists() and hidden(out) == []
    # Once the limit is gone it trains: in this process (the debug executor), as neither the
    # command's process nor its job's is checked here, and one of each costs ~15 s of imports.
    pomlia_here(*train, *small, env={**env, "POMLIA_CLUSTER": "debug"})
    assert (out / "encoder.pt").is_file()
