"""An index generation whose files cannot be read (deleted, truncated, not a manifest, a
file of another index): `pomlia similar --images` says so in one line naming the file and
the command that repairs it, and `pomlia index build` rebuilds it from the embeddings."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pomlia_hpc.fingerprint.extract import finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.index import build_index
from pomlia_hpc.fingerprint.shards import run_shard
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main
from tests.fixtures.factories import make_dataset, make_encoder


def _truncate(gen: Path) -> str:
    path = gen / "index.faiss"
    path.write_bytes(path.read_bytes()[:1000])
    return f"{path} is damaged"


def _delete(gen: Path) -> str:
    (gen / "index.faiss").unlink()
    return f"{gen / 'index.faiss'} does not exist"


def _no_manifest(gen: Path) -> str:
    (gen / "manifest.json").unlink()
    return f"{gen / 'manifest.json'} does not exist"


def _bad_manifest(gen: Path) -> str:
    (gen / "manifest.json").write_text('{"encoder":')
    return f"{gen / 'manifest.json'}: not valid JSON"


def _other_index(gen: Path) -> str:
    # The index file of the previous generation, which holds one data set fewer.
    shutil.copyfile(gen.parent / "gen-000001" / "index.faiss", gen / "index.faiss")
    return f"{gen / 'index.faiss'} holds 71 vectors of 4 dimensions, its manifest says 100 of 4"


def _other_encoders(gen: Path) -> str:
    # Another encoder's index folder copied here: it said "holds no other dataset's images".
    manifest = gen / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"encoder": "enc"', '"encoder": "ae8"'))
    return f"{manifest} is the images index of encoder 'ae8'"


@pytest.mark.parametrize(
    "damage", [_truncate, _delete, _no_manifest, _bad_manifest, _other_index, _other_encoders]
)
def test_damaged_index_is_named_and_rebuilt(
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], str],
) -> None:
    refs = [
        make_dataset(workspace, reg, "blood", "bloodmnist", (30, 6, 6)),
        make_dataset(workspace, reg, "organ", "organamnist", (20, 5, 4)),
        make_dataset(workspace, reg, "derma", "dermamnist", (20, 5, 4)),
    ]
    make_encoder(workspace, reg, "enc", latent_dim=4)
    for some in (refs[:2], refs[2:]):  # two generations: the second adds derma
        plan = plan_extraction(reg, workspace, "enc", some, threads=1)
        for spec in plan.specs:
            run_shard(spec)
        finish_extraction(reg, plan)
        build_index(reg, workspace, "enc")
    gen = (workspace.path("indexes", "enc", "images") / "current").resolve()
    assert gen.name == "gen-000002"
    said = damage(gen)
    capsys.readouterr()  # the set-up's progress lines

    code, out, err = pomlia_main(
        monkeypatch, capsys, "similar", "blood", "-e", "enc", "--images", "2"
    )
    assert code == 2 and out == "", (code, out, err)
    first, hint = err.splitlines()
    assert first.startswith("error: the images index of encoder 'enc' cannot be read: "), err
    assert said in first and "Traceback" not in err and "/project/faiss" not in err, err
    repair = "`pomlia index build --encoder enc` (it rebuilds the index from the embeddings)"
    assert hint == f"  hint: run {repair}", err

    code, out, err = pomlia_main(monkeypatch, capsys, "index", "build", "-e", "enc")
    assert code == 0, (out, err)
    assert "index rebuilt: Flat, 100 vectors, generation 3" in out, out
    assert said in out and out.rstrip().endswith(": rebuilt from the embeddings"), out

    code, out, err = pomlia_main(
        monkeypatch, capsys, "similar", "blood", "-e", "enc", "--images", "2", "--json"
    )
    assert code == 0 and out.count('"dataset"') == 2, (out, err)


def test_the_repair_of_an_ip_index_keeps_its_metric(
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The hint named the plain `pomlia index build`, which rebuilds an exact L2 index: a
    user who followed it for a damaged `--metric ip` index got distances of another kind
    (Euclidean, not 1 - cosine) without a word. Its manifest still says how it was built."""
    refs = [
        make_dataset(workspace, reg, "blood", "bloodmnist", (30, 6, 6)),
        make_dataset(workspace, reg, "organ", "organamnist", (20, 5, 4)),
    ]
    make_encoder(workspace, reg, "enc", latent_dim=4)
    plan = plan_extraction(reg, workspace, "enc", refs, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    build_index(reg, workspace, "enc", metric="ip")
    current = workspace.path("indexes", "enc", "images") / "current"
    _truncate(current.resolve())
    capsys.readouterr()
    code, _out, err = pomlia_main(
        monkeypatch, capsys, "similar", "blood", "-e", "enc", "--images", "2"
    )
    command = "pomlia index build --encoder enc --metric ip"
    assert code == 2 and f"  hint: run `{command}` (it rebuilds" in err, err
    assert "(Success)" not in err, err  # a short read's errno text, 0
    code, out, err = pomlia_main(monkeypatch, capsys, *command.split()[1:])
    assert code == 0 and "rebuilt from the embeddings" in out, (out, err)
    assert '"metric": "ip"' in (current / "manifest.json").read_text()
