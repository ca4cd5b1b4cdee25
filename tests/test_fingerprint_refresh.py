"""``pomlia fingerprint refresh``: nothing to do when the encoder covers every newest version;
otherwise a new encoder is trained, every version embedded, its index built, and only then is
it made current (a failure before the end leaves the previous encoder current)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from pomlia_hpc.fingerprint import refresh as refresh_mod
from pomlia_hpc.fingerprint.refresh import current_encoder, plan_refresh, refresh
from pomlia_hpc.fingerprint.train import TrainConfig, get_encoder, train_encoder
from pomlia_hpc.registry import FingerprintSet, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok
from tests.fixtures.factories import make_dataset

CFG = TrainConfig.model_validate(
    {"encoder": {"latent_dim": 2}, "epochs": 1, "batch_size": 16, "max_images_per_dataset": 32}
)


def test_refresh_retrains_on_new_versions_and_switches_only_when_complete(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs in this process (submitit's DebugExecutor): the refresh's logic is under test, not
    # the cluster layer (tested on its own), and a job process per training and extraction
    # took most of a minute on a loaded machine.
    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, workspace, "ae", [a], CFG)
    assert not plan_refresh(reg, workspace, "ae").needed
    assert not refresh(reg, workspace, "ae", say=lambda _l: None).needed
    assert current_encoder(workspace) is None

    b = make_dataset(workspace, reg, "organ", "organamnist", (32, 4, 4), chunk_rows=16)
    plan = plan_refresh(reg, workspace, "ae")
    assert plan.needed and plan.new == [b] and plan.name == "ae-r1"

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("index build failed")

    monkeypatch.setattr(refresh_mod, "build_index", broken)
    with pytest.raises(RuntimeError):
        refresh(reg, workspace, "ae", say=lambda _l: None)
    assert current_encoder(workspace) is None  # not switched: the refresh did not complete
    monkeypatch.undo()

    done = refresh(reg, workspace, "ae", say=lambda _l: None)  # resumes ae-r1, same name
    assert done.name == "ae-r1" and current_encoder(workspace) == "ae-r1"
    new_id = get_encoder(reg, "ae-r1").id
    with reg.session() as s:
        sets = s.query(FingerprintSet).filter(FingerprintSet.encoder_id == new_id).all()
    assert sorted(fs.status for fs in sets) == ["complete", "complete"]  # both versions
    assert not plan_refresh(reg, workspace).needed  # the current encoder covers both now


def test_refresh_reports_progress_as_train_extract_and_index_build(
    workspace: Workspace, reg: Registry
) -> None:
    """`fingerprint refresh` ran for minutes printing three lines: each of its steps now
    reports as its own command does (time-stamped lines off a terminal)."""
    debug = replace(workspace, cluster_profile="debug")
    a = make_dataset(debug, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, debug, "ae", [a], CFG)
    make_dataset(debug, reg, "organ", "organamnist", (32, 4, 4), chunk_rows=16)
    out = cli_ok("--cluster", "debug", "fingerprint", "refresh", "-e", "ae")
    lines = [" ".join(line.split()) for line in out.splitlines()]
    stamp = re.compile(r"^\[\d\d:\d\d:\d\d\] ")
    for text in (
        "training ae-r1 on 2 versions (1 new)",
        "training 'ae-r1': 1/1 epochs",
        "extracting: ",
        "array tasks",
        "adding vectors: ",
        "current encoder: ae-r1",
    ):
        assert any(stamp.match(line) and text in line for line in lines), (text, out)
