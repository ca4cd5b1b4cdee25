"""A workspace that moves (``mv`` or ``cp -a`` of the whole POMLIA_HOME): the registry's
paths name the old folder. A moved workspace is one error naming `pomlia registry relocate`
(not a missing store, a "damaged" version or a hint to train the encoder again), a copy a
warning; after `registry relocate` the registry, the study records and the slot links name
the new folder and the commands work there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pomlia_hpc.data.api import list_versions
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main as pomlia
from tests.fixtures.factories import tiny_dataset, tiny_study, tiny_task


def old_workspace(tmp_path: Path, db_url: str | None = None) -> tuple[Path, str, Path]:
    """A workspace in a folder with a space, non-ASCII and shell characters: one dataset
    version, a task, a study (its ``study.json`` names the store) and a slot whose ``current``
    link names a folder inside it; its registry at ``db_url`` (else its own SQLite file).
    Returns (home, dataset ref, study folder)."""
    home = tmp_path / "old place ü $x"
    url = db_url or f"sqlite:///{home / 'registry.db'}"
    ws = Workspace(home=home, db_url=url, cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url, create=True)
    try:
        tiny_task(ws, reg, "t", sizes=(24, 8, 8))  # and its data set, t_data
        tiny_study(reg, ws, "t", "s1")
        ref = f"t_data@{list_versions(reg)[0].version}"
    finally:
        reg.dispose()
    bundle = home / "models" / "m" / "bundles" / "v1"
    bundle.mkdir(parents=True)
    (home / "serving" / "a").mkdir(parents=True)
    (home / "serving" / "a" / "current").symlink_to(bundle)
    return home, ref, home / "runs" / "s1"


def test_moved_workspace_is_one_error_and_relocate_makes_it_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old, ref, _study = old_workspace(tmp_path)
    new = tmp_path / "new place ß 'y'"
    shutil.move(old, new)
    monkeypatch.setenv("POMLIA_HOME", str(new))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)

    code, out, err = pomlia(monkeypatch, capsys, "data", "verify", "t_data")
    assert code == 2, (out, err)
    first, *rest = err.strip().splitlines()
    assert first.startswith("error: ") and str(old) in first and str(new) in first, err
    assert "`pomlia registry relocate`" in err and "Traceback" not in err, err
    assert len(rest) == 1 and rest[0].startswith("  hint: "), err

    code, out, err = pomlia(monkeypatch, capsys, "registry", "relocate", "--dry-run")
    assert code == 0, err
    assert "would rewrite registry rows: " in out and "dataset_versions 1" in out, out
    assert pomlia(monkeypatch, capsys, "data", "verify", "t_data")[0] == 2  # nothing changed

    code, out, err = pomlia(monkeypatch, capsys, "registry", "relocate")
    assert code == 0 and err == "", (out, err)
    assert "rewrote registry rows: " in out and "1 link(s)" in out, out

    code, out, err = pomlia(monkeypatch, capsys, "data", "verify", "t_data")
    assert code == 0 and " ok " in out and "warning" not in err, (out, err)  # err: progress
    code, out, err = pomlia(monkeypatch, capsys, "data", "show", ref, "--json")
    assert code == 0, err
    assert json.loads(out)["store_path"].startswith(f"{new}/stores/t_data/"), out
    spec = json.loads((new / "runs" / "s1" / "study.json").read_text())
    assert spec["store_path"].startswith(f"{new}/stores/t_data/"), spec
    assert (new / "serving" / "a" / "current").readlink() == new / "models/m/bundles/v1"

    code, out, _ = pomlia(monkeypatch, capsys, "registry", "relocate")
    assert code == 0 and "nothing to do" in out, out


def test_copied_workspace_warns_until_relocated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old, _ref, _study = old_workspace(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(old, copy, symlinks=True)
    monkeypatch.setenv("POMLIA_HOME", str(copy))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)

    code, out, err = pomlia(monkeypatch, capsys, "data", "list", "--json")
    assert code == 0, err
    assert err.startswith("warning: ") and str(old) in err and "registry relocate" in err, err
    assert json.loads(out)[0]["store_path"].startswith(str(old)), out  # still the original's

    assert pomlia(monkeypatch, capsys, "registry", "relocate")[0] == 0
    code, out, err = pomlia(monkeypatch, capsys, "data", "list", "--json")
    assert code == 0 and err == "", err
    assert json.loads(out)[0]["store_path"].startswith(f"{copy}/stores/"), out
    # the original is untouched: its registry and records still name it
    spec = json.loads((old / "runs" / "s1" / "study.json").read_text())
    assert spec["store_path"].startswith(f"{old}/stores/"), spec


def test_relocate_needs_an_absolute_old_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("POMLIA_HOME", str(home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    assert pomlia(monkeypatch, capsys, "init")[0] == 0
    code, _, err = pomlia(monkeypatch, capsys, "registry", "relocate")
    assert code == 2 and "expected --from OLD_FOLDER" in err, err
    code, _, err = pomlia(monkeypatch, capsys, "registry", "relocate", "--from", "rel/dir")
    assert code == 2 and "expected an absolute folder" in err, err


@pytest.mark.postgres
def test_relocate_rewrites_a_postgres_registry(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old, _ref, _study = old_workspace(tmp_path, pg_url)
    new = tmp_path / "moved"
    shutil.move(old, new)
    monkeypatch.setenv("POMLIA_HOME", str(new))
    monkeypatch.setenv("POMLIA_DB_URL", pg_url)
    code, _, err = pomlia(monkeypatch, capsys, "data", "list")
    assert code == 0 and "names workspace" not in err, err  # shared registries: no check
    code, out, err = pomlia(monkeypatch, capsys, "registry", "relocate", "--from", str(old))
    assert code == 0 and "dataset_versions 1" in out, (out, err)
    code, out, err = pomlia(monkeypatch, capsys, "data", "verify", "t_data")
    assert code == 0 and " ok " in out, (out, err)
    code, out, _ = pomlia(monkeypatch, capsys, "runs", "list", "--json")
    assert code == 0, out


@pytest.mark.postgres
def test_a_copy_sharing_a_postgres_registry_is_not_relocated_unasked(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy whose original still exists and uses the same PostgreSQL registry: relocating
    would point the original's rows at the copy, so it is refused unless --force."""
    old, _ref, _study = old_workspace(tmp_path, pg_url)
    copy = tmp_path / "copy"
    shutil.copytree(old, copy, symlinks=True)
    monkeypatch.setenv("POMLIA_HOME", str(copy))
    monkeypatch.setenv("POMLIA_DB_URL", pg_url)
    code, _, err = pomlia(monkeypatch, capsys, "registry", "relocate", "--from", str(old))
    assert code == 2 and f"{old} still exists and uses the same registry" in err, err
    assert "--force" in err
    spec = json.loads((copy / "runs" / "s1" / "study.json").read_text())
    assert spec["store_path"].startswith(f"{old}/"), spec  # nothing rewritten
    relocate = ("registry", "relocate", "--from", str(old), "--force")
    code, out, err = pomlia(monkeypatch, capsys, *relocate)
    assert code == 0 and "dataset_versions 1" in out, (out, err)


@pytest.mark.postgres
def test_users_sharing_a_postgres_registry_are_not_told_they_moved(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Many users, one PostgreSQL registry, a workspace each (the cluster guide's set-up):
    the newest store names another user's workspace, gone from this node or not, and that
    is neither an error nor a warning for this one."""
    other, _ref, _study = old_workspace(tmp_path, pg_url)
    mine = tmp_path / "mine"
    monkeypatch.setenv("POMLIA_HOME", str(mine))
    monkeypatch.setenv("POMLIA_DB_URL", pg_url)
    for gone in (False, True):
        if gone:
            shutil.rmtree(other)  # not mounted on this node, say
        code, out, err = pomlia(monkeypatch, capsys, "data", "list")
        assert code == 0 and "t_data" in out and "names workspace" not in err, (out, err)


@pytest.mark.postgres
def test_relocate_of_a_shared_registry_needs_the_old_folder(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One PostgreSQL registry, a workspace each: without --from, relocate read the old folder
    off the newest store, another user's whose folder was gone (a purged scratch), and
    rewrote that user's rows to name this workspace, leaving its own rows as they were."""
    mine, _ref, _study = old_workspace(tmp_path / "me", pg_url)
    other = tmp_path / "other"
    ws = Workspace(home=other, db_url=pg_url, cluster_profile="local")
    ws.create()
    reg = Registry.open(pg_url)
    try:
        tiny_dataset(ws, reg, "o_data")  # the newest store: the other user's
    finally:
        reg.dispose()
    shutil.rmtree(other)
    new = tmp_path / "moved"
    shutil.move(mine, new)
    monkeypatch.setenv("POMLIA_HOME", str(new))
    monkeypatch.setenv("POMLIA_DB_URL", pg_url)
    code, _, err = pomlia(monkeypatch, capsys, "registry", "relocate")
    assert code == 2 and "expected --from OLD_FOLDER" in err, err
    code, out, err = pomlia(monkeypatch, capsys, "registry", "relocate", "--from", str(mine))
    assert code == 0 and "dataset_versions 1" in out, (out, err)
    reg = Registry.open(pg_url)
    try:
        paths = {v.name: v.store_path for v in list_versions(reg)}
    finally:
        reg.dispose()
    assert paths["o_data"].startswith(f"{other}/stores/"), paths
    assert paths["t_data"].startswith(f"{new}/stores/"), paths
