"""Embeddings an ``extract --force`` set aside come back whatever stops it before its array
job is submitted (a full disk partway through planning, Ctrl-C during submission), and
set-aside copies that a killed run left are put back by the next run, never deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pomlia_hpc.fingerprint.extract as fx
import pomlia_hpc.fingerprint.planning as fplan
from pomlia_hpc.fingerprint.candidates import fingerprint_set
from pomlia_hpc.fingerprint.extract import extract, finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.shards import marker_dir, read_embeddings, run_shard
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder


def _extracted(workspace: Workspace, reg: Registry, refs: list[str]) -> list[Path]:
    plan = plan_extraction(reg, workspace, "enc", refs, shards=2, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    return [Path(fingerprint_set(reg, "enc", ref)[0].embeddings_path) for ref in refs]


def _kept(reg: Registry, ref: str, out: Path, before: np.ndarray) -> None:
    np.testing.assert_array_equal(read_embeddings(out), before)
    assert len(list(marker_dir(out).iterdir())) == 2
    assert fingerprint_set(reg, "enc", ref)[0].status == "complete"
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".aside")]


def test_a_failure_while_planning_puts_back_what_was_set_aside(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = [
        make_dataset(workspace, reg, name, sizes=(20, 4, 8), chunk_rows=16)
        for name in ("blood", "derma")
    ]
    make_encoder(workspace, reg, "enc", latent_dim=4)
    outs = _extracted(workspace, reg, refs)
    before = [read_embeddings(out) for out in outs]
    real = fplan.create_embeddings
    calls: list[int] = []

    def full_disk(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the second data set, after the first was set aside
            raise OSError(28, "No space left on device")
        real(*args, **kwargs)

    monkeypatch.setattr(fplan, "create_embeddings", full_disk)
    with pytest.raises(OSError, match="No space"):
        plan_extraction(reg, workspace, "enc", refs, shards=2, threads=1, force=True)
    for ref, out, b in zip(refs, outs, before, strict=True):
        _kept(reg, ref, out, b)


def test_ctrl_c_before_the_submission_puts_back_what_was_set_aside(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    (out,) = _extracted(workspace, reg, [ref])
    before = read_embeddings(out)

    def interrupted(*_args: Any) -> list[Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(fx, "group_shards", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract(reg, workspace, "enc", [ref], shards=2, force=True)
    _kept(reg, ref, out, before)


def test_set_aside_vectors_a_killed_run_left_are_put_back_by_the_next_run(
    workspace: Workspace, reg: Registry
) -> None:
    ref = make_dataset(workspace, reg, "blood", sizes=(20, 4, 8), chunk_rows=16)
    make_encoder(workspace, reg, "enc", latent_dim=4)
    (out,) = _extracted(workspace, reg, [ref])
    before = read_embeddings(out)
    # Killed after moving the old vectors aside (as a hard kill mid-plan leaves them) ...
    aside = [p for p in out.parent.iterdir() if p.name.startswith(out.stem + ".")]
    for path in aside:
        path.rename(path.with_name(path.name + ".aside"))
    plan = plan_extraction(reg, workspace, "enc", [ref], shards=2, threads=1)
    assert plan.specs == []  # ... the next run finds them complete again: nothing to redo
    finish_extraction(reg, plan)
    _kept(reg, ref, out, before)
