"""The gate scores champion and challenger only on images neither trained on: a challenger
trained on a version whose train split took in some of the gate's fixed test images (the
dataset added again with its test images moved) is not scored on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.loop.gate import run_gate
from pomlia_hpc.loop.harvest import harvest
from pomlia_hpc.loop.promote import gate_decisions, put_on_slot
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.serve.predlog import log_dir
from pomlia_hpc.workspace import Workspace
from tests.loop_support import CLASSES, make_model, predict, write_production


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)


def _npz(path: Path, splits: dict[str, np.ndarray]) -> Path:
    labels = {f"{s}_labels": np.arange(len(v))[:, None] % len(CLASSES) for s, v in splits.items()}
    np.savez(path, **{f"{s}_images": v for s, v in splits.items()}, **labels)
    return path


def test_gate_leaves_out_images_a_model_trained_on(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    x = {s: _images(n, i) for i, (s, n) in enumerate((("train", 40), ("val", 10), ("test", 60)))}
    base = ingest(workspace, reg, "scans", _npz(tmp_path / "a.npz", x), class_names=CLASSES)
    champ = make_model(reg, tmp_path, "champion", 1, base.id)
    put_on_slot(reg, workspace, "scans", "champion", kind="initial")
    prod = _images(200, 7)
    write_production(log_dir(workspace.path("logs"), "champion"), prod, predict(champ, prod))
    got = harvest(reg, workspace, "champion")
    # The same data added again under another name, 20 of its test images moved into train.
    moved = {"train": np.concatenate([x["train"], x["test"][:20]]), "val": x["val"]}
    moved["test"] = x["test"][20:]
    again = ingest(workspace, reg, "scans_v2", _npz(tmp_path / "b.npz", moved), class_names=CLASSES)
    make_model(reg, tmp_path, "challenger", 2, again.id)

    run_gate(reg, "scans", "challenger", data_ref=got.record.ref)
    ev = gate_decisions(reg, "scans")[-1].evidence
    assert ev["fixed_test"]["n"] == 40  # the parent's 60 test images less the 20 trained on
    assert ev["trained_on"] == {"fixed_test_rows": 20, "production_test_rows": 0}


@pytest.mark.usefixtures("wide_console")
def test_gate_leaves_out_what_a_model_saw_through_its_init_model_and_extra_images(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """The gate read only the model's own training split: a challenger trained on the
    harvest itself (nothing read) but started from a model trained on 20 of the gate's fixed
    test images, and given 5 more as extra images, was scored on all 25."""
    x = {s: _images(n, i) for i, (s, n) in enumerate((("train", 40), ("val", 10), ("test", 60)))}
    base = ingest(workspace, reg, "scans", _npz(tmp_path / "a.npz", x), class_names=CLASSES)
    champ = make_model(reg, tmp_path, "champion", 1, base.id)
    put_on_slot(reg, workspace, "scans", "champion", kind="initial")
    prod = _images(200, 7)
    write_production(log_dir(workspace.path("logs"), "champion"), prod, predict(champ, prod))
    got = harvest(reg, workspace, "champion")
    moved = {"train": np.concatenate([x["train"], x["test"][:20]]), "val": x["val"]}
    moved["test"] = x["test"][20:]
    again = ingest(workspace, reg, "scans_v2", _npz(tmp_path / "b.npz", moved), class_names=CLASSES)
    donor = make_model(reg, tmp_path, "donor", 3, again.id)
    chal = make_model(reg, tmp_path, "challenger", 2, got.record.id)
    extra = tmp_path / "nearest.npz"
    np.savez(extra, images=x["test"][20:25], labels=np.zeros((5, 1), np.int64))
    with reg.session() as s:
        row = s.get(Model, chal.id)
        assert row is not None
        row.lineage = {
            **row.lineage,
            "init_model_id": donor.id,
            "extra_data": str(extra),
            "extra_n": 5,
        }

    run_gate(reg, "scans", "challenger", data_ref=got.record.ref)
    ev = gate_decisions(reg, "scans")[-1].evidence
    assert ev["trained_on"] == {"fixed_test_rows": 25, "production_test_rows": 0}
    assert ev["fixed_test"]["n"] == 35
    out = CliRunner().invoke(app, ["deploy", "history", "scans"])
    assert out.exit_code == 0 and "fixed 25, production 0" in out.output, out.output


def test_gate_leaves_out_what_the_encoder_a_model_started_from_read(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """A challenger started from an encoder trained on every row of the parent version
    (`fingerprint train --split all`) was scored on the fixed test images that encoder's
    weights were fitted to; now they are left out, and the gate says why none were left."""
    from pomlia_hpc.registry import Encoder
    from tests.fixtures.factories import make_encoder

    x = {s: _images(n, i) for i, (s, n) in enumerate((("train", 40), ("val", 10), ("test", 60)))}
    base = ingest(workspace, reg, "scans", _npz(tmp_path / "a.npz", x), class_names=CLASSES)
    champ = make_model(reg, tmp_path, "champion", 1, base.id)
    put_on_slot(reg, workspace, "scans", "champion", kind="initial")
    prod = _images(200, 7)
    write_production(log_dir(workspace.path("logs"), "champion"), prod, predict(champ, prod))
    got = harvest(reg, workspace, "champion")
    enc = make_encoder(workspace, reg, "everything")
    chal = make_model(reg, tmp_path, "challenger", 2, got.record.id)
    with reg.session() as s:
        enc_row, chal_row = s.get(Encoder, enc.id), s.get(Model, chal.id)
        assert enc_row is not None and chal_row is not None
        enc_row.config = {**enc_row.config, "split": "all"}
        enc_row.dataset_version_ids = [base.id]
        lineage = {**chal_row.lineage, "encoder_id": enc.id, "config": {"init": "encoder"}}
        chal_row.lineage = lineage

    outcome = run_gate(reg, "scans", "challenger", data_ref=got.record.ref)
    ev = gate_decisions(reg, "scans")[-1].evidence
    assert ev["trained_on"] == {"fixed_test_rows": 60, "production_test_rows": 0}
    assert not outcome.result.passed
    assert "no fixed test images left (60 left out: a model trained on them)" in ev["reason"]
