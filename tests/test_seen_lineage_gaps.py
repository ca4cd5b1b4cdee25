"""What a model's lineage cannot tell is said, never taken for "nothing seen". A model
registered by hand (no training version) or before the lineage fields (its config says it
started from a model, or took extra images, that its lineage does not name) passed
`automl run --init-model` and the gate silently; now each says "lineage unknown" naming the
model (a warning; the gate's evidence and `deploy history`). A model whose extra images'
file (`extra/nearest.npz`) is gone counted as having trained on no extra images, so the
init check and the gate under-counted; now both refuse it, naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import pomlia_hpc.automl.study as study_mod
from pomlia_hpc.automl.tasks import add_task
from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.gate import run_gate
from pomlia_hpc.loop.harvest import harvest
from pomlia_hpc.loop.promote import gate_decisions, put_on_slot
from pomlia_hpc.registry import Encoder, Model, Registry
from pomlia_hpc.serve.predlog import log_dir
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_encoder
from tests.loop_support import CLASSES, make_model, predict, write_production
from tests.seen_support import automl_run, interrupted, npz

pytestmark = pytest.mark.usefixtures("wide_console")


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)


def _set_lineage(reg: Registry, model_id: int, lineage: dict[str, Any]) -> None:
    with reg.session() as s:
        row = s.get(Model, model_id)
        assert row is not None
        row.lineage = lineage


def test_init_model_of_unknown_lineage_is_named_and_a_lost_extra_file_refused(
    tmp_path: Path,
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    x = {s: _images(n, i) for i, (s, n) in enumerate((("train", 40), ("val", 12), ("test", 12)))}
    data = ingest(workspace, reg, "scans", npz(tmp_path / "a.npz", x), class_names=CLASSES)
    add_task(reg, "t", data.ref, "acc")
    monkeypatch.setattr(study_mod, "run_study", interrupted)

    by_hand = make_model(reg, tmp_path, "by_hand", 1, data.id)
    _set_lineage(reg, by_hand.id, {})  # `pomlia model register`: no training version
    code, said = automl_run(monkeypatch, capsys, "--init-model", "by_hand", "s1")
    assert code == 130, said
    assert "warning: --init-model by_hand: lineage unknown (model by_hand: no training" in said

    # A checkpoint of a trial from before trials recorded their configuration in it.
    _set_lineage(reg, by_hand.id, {"dataset_version_id": data.id, "run_id": 7})
    code, said = automl_run(monkeypatch, capsys, "--init-model", "by_hand", "s1b")
    assert code == 130, said
    assert "lineage unknown (model by_hand: no training configuration recorded" in said, said

    # Registered before init models were recorded: its config says it started from one.
    old = make_model(reg, tmp_path, "old", 2, data.id)
    _set_lineage(reg, old.id, {"dataset_version_id": data.id, "config": {"init": "model"}})
    code, said = automl_run(monkeypatch, capsys, "--init-model", "old", "s2")
    assert code == 130 and "lineage unknown (model old: started from a model" in said, said

    fair = make_model(reg, tmp_path, "fair", 3, data.id)
    code, said = automl_run(monkeypatch, capsys, "--init-model", "fair", "s3")
    assert code == 130 and "lineage unknown" not in said, said

    # It trained on 5 extra images whose file is gone: which they were cannot be told.
    gone = tmp_path / "study" / "extra" / "nearest.npz"
    lineage = {"dataset_version_id": data.id, "extra_data": str(gone), "extra_n": 5}
    _set_lineage(reg, fair.id, lineage)
    code, said = automl_run(monkeypatch, capsys, "--init-model", "fair", "s4")
    assert code == 2, said
    assert f"model fair trained on 5 extra image(s) from {gone}, which no longer exists" in said
    assert not study_mod.study_dir(workspace, "s4").exists()


def test_gate_names_a_model_of_unknown_lineage_and_refuses_a_lost_extra_file(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    x = {s: _images(n, i) for i, (s, n) in enumerate((("train", 40), ("val", 10), ("test", 60)))}
    base = ingest(workspace, reg, "scans", npz(tmp_path / "a.npz", x), class_names=CLASSES)
    task = add_task(reg, "t", base.ref, "acc")
    champ = make_model(reg, tmp_path, "champion", 1, base.id)
    _set_lineage(reg, champ.id, {"task_id": task.id})  # `pomlia model register --task-id`
    with reg.session() as s:
        row = s.get(Model, champ.id)
        assert row is not None
        row.task_id = task.id
    put_on_slot(reg, workspace, "scans", "champion", kind="initial")
    prod = _images(200, 7)
    write_production(log_dir(workspace.path("logs"), "champion"), prod, predict(champ, prod))
    got = harvest(reg, workspace, "champion")
    chal = make_model(reg, tmp_path, "challenger", 2, got.record.id)

    outcome = run_gate(reg, "scans", "challenger", data_ref=got.record.ref)
    assert [u.split(":")[0] for u in outcome.lineage_unknown] == ["model champion"]
    ev = gate_decisions(reg, "scans")[-1].evidence
    assert ev["lineage_unknown"] == list(outcome.lineage_unknown)
    out = CliRunner().invoke(app, ["deploy", "history", "scans"])
    assert out.exit_code == 0 and "lineage unknown: model champion" in out.output, out.output
    out = CliRunner().invoke(app, ["deploy", "history", "scans", "--json"])
    assert "lineage_unknown" in out.output, out.output

    gone = tmp_path / "study" / "extra" / "nearest.npz"
    lineage = {"dataset_version_id": got.record.id, "extra_data": str(gone), "extra_n": 5}
    _set_lineage(reg, chal.id, lineage)
    with pytest.raises(InputError, match="model challenger trained on 5 extra image"):
        run_gate(reg, "scans", "challenger", data_ref=got.record.ref)
    # The extra images are where the study wrote them: no refusal, and they are left out.
    gone.parent.mkdir(parents=True)
    np.savez(gone, images=x["test"][:5], labels=np.zeros((5, 1), np.int64))
    run_gate(reg, "scans", "challenger", data_ref=got.record.ref)
    assert gate_decisions(reg, "scans")[-1].evidence["trained_on"]["fixed_test_rows"] == 5


def test_a_model_started_from_an_encoder_its_lineage_does_not_name_says_so(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """Its gap read `started from encoder id None, which is not registered`: an id that is
    not one, and a removal that did not happen."""
    from pomlia_hpc.models.seen import lineage_gaps

    x = {s: _images(n, i) for i, (s, n) in enumerate((("train", 20), ("val", 6), ("test", 6)))}
    data = ingest(workspace, reg, "scans", npz(tmp_path / "a.npz", x), class_names=CLASSES)
    model = make_model(reg, tmp_path, "old", 1, data.id)
    _set_lineage(reg, model.id, {"dataset_version_id": data.id, "config": {"init": "encoder"}})
    with reg.session() as s:
        row = s.get(Model, model.id)
    assert row is not None
    assert lineage_gaps(reg, row) == [
        "model old: started from an encoder its lineage does not name"
    ]
    _set_lineage(
        reg,
        model.id,
        {"dataset_version_id": data.id, "encoder_id": 99, "config": {"init": "encoder"}},
    )
    with reg.session() as s:
        row = s.get(Model, model.id)
    assert row is not None
    assert lineage_gaps(reg, row) == ["model old: its init encoder id 99 is no longer registered"]


def test_an_encoder_whose_record_cannot_say_what_it_read_is_lineage_unknown(
    tmp_path: Path,
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An encoder recording no training data sets, or one no longer registered, passed
    `automl run --encoder` with no word (what it read was taken for "nothing"); a model
    started from one recording none, `--init-model` and the gate alike."""
    x = {s: _images(n, i) for i, (s, n) in enumerate((("train", 40), ("val", 12), ("test", 12)))}
    data = ingest(workspace, reg, "scans", npz(tmp_path / "a.npz", x), class_names=CLASSES)
    add_task(reg, "t", data.ref, "acc")
    monkeypatch.setattr(study_mod, "run_study", interrupted)
    for name, versions in (("bare", []), ("gone", [data.id + 100]), ("own", [data.id])):
        enc = make_encoder(workspace, reg, name)
        with reg.session() as s:
            row = s.get(Encoder, enc.id)
            assert row is not None
            row.dataset_version_ids = versions

    code, said = automl_run(monkeypatch, capsys, "--encoder", "bare", "e1")
    assert code == 130, said
    assert (
        "warning: --encoder bare: lineage unknown (encoder bare: no training data sets "
        f"recorded); whether it trained on {data.ref}'s val/test images cannot be checked"
    ) in said, said
    code, said = automl_run(monkeypatch, capsys, "--encoder", "gone", "e2")
    assert code == 130, said
    assert (
        f"--encoder gone: lineage unknown (encoder gone: its dataset version id "
        f"{data.id + 100} is gone)"
    ) in said, said
    code, said = automl_run(monkeypatch, capsys, "--encoder", "own", "e3")
    assert code == 130 and "lineage unknown" not in said, said

    warm = make_model(reg, tmp_path, "warm", 1, data.id)
    with reg.session() as s:
        bare = s.query(Encoder).filter_by(name="bare").one()
        lineage = {"dataset_version_id": data.id, "encoder_id": bare.id}
    _set_lineage(reg, warm.id, {**lineage, "config": {"init": "encoder"}})
    code, said = automl_run(monkeypatch, capsys, "--init-model", "warm", "m1")
    assert code == 130, said
    assert (
        "warning: --init-model warm: lineage unknown (encoder bare: no training data sets recorded)"
    ) in said, said


def test_a_chain_of_init_models_longer_than_followed_is_lineage_unknown(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """A loop that fine-tunes each champion from the last adds one model per promotion to its
    chain of init models; past the models followed (32), what the older ones trained on was
    left out without a word, as if they had seen nothing."""
    from pomlia_hpc.models.seen import MAX_CHAIN, seen_images

    x = {s: _images(n, i) for i, (s, n) in enumerate((("train", 20), ("val", 6), ("test", 6)))}
    data = ingest(workspace, reg, "scans", npz(tmp_path / "a.npz", x), class_names=CLASSES)
    parent: int | None = None
    with reg.session() as s:
        for i in range(MAX_CHAIN + 1):
            lineage: dict[str, Any] = {"dataset_version_id": data.id, "config": {"init": "model"}}
            if parent is None:
                lineage["config"] = {"init": "scratch"}
            else:
                lineage["init_model_id"] = parent
            row = Model(name=f"m{i}", path=str(tmp_path / f"m{i}.pt"), lineage=lineage)
            s.add(row)
            s.flush()
            parent = row.id
    with reg.session() as s:
        newest = s.get(Model, parent)
    assert newest is not None
    seen = seen_images(reg, newest)
    assert len(seen.models) == MAX_CHAIN
    assert seen.unknown == [
        f"model m1: its init model m0 and the models before it were not read (only "
        f"{MAX_CHAIN} models of a chain are followed)"
    ]
    with reg.session() as s:
        shorter = s.get(Model, parent - 1)
    assert shorter is not None and seen_images(reg, shorter).unknown == []
