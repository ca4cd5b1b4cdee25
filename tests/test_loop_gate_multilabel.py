"""The gate on a multi-label task compares label-wise accuracy (paired t), not exact match.

The models answer the same labels for every image (a zeroed head with a fixed bias), so each
image's score is known exactly: the truth is the "good" model's answer with one label flipped
(label ``i % 4`` of image ``i``), so the good model gets 3 of 4 labels right on every image and
never all 4; the other model gets 1 or 3 of 4 (mean 0.5), never all 4 either. By exact match
both models are always wrong, so McNemar saw no difference and the gate refused a challenger
that is better label by label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cli.loop import stage_lines
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.harvest import NewImages, harvest_version
from pomlia_hpc.data.store import find_version
from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.driver import LoopContext, open_run
from pomlia_hpc.loop.gate import labelwise_accuracy, promote_with_gate, run_gate
from pomlia_hpc.loop.promote import champion, gate_decisions, put_on_slot
from pomlia_hpc.loop.stages import gate_stage
from pomlia_hpc.loop.stats import PAIRED_T
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.workspace import Workspace
from tests.loop_support import register_small_cnn

LABELS = ["l0", "l1", "l2", "l3"]
GOOD = (1, 1, 0, 0)  # 3 of 4 right on every image
POOR = (1, 0, 1, 0)  # 1 or 3 of 4 right (0.5 on average)


def _truth(n: int) -> np.ndarray:
    y = np.tile(np.asarray(GOOD, np.int64), (n, 1))
    y[np.arange(n), np.arange(n) % 4] ^= 1
    return y


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)


def _model(
    reg: Registry, root: Path, name: str, answer: tuple[float, ...], version_id: int
) -> Model:
    """A multi-label small CNN that answers ``answer`` (1 present, 0 absent, NaN no output)
    for every image."""
    net = build_classifier("small_cnn", len(LABELS), 3, image_size=28)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([5.0 * (2 * a - 1) for a in answer]))
    return register_small_cnn(reg, root, name, net, version_id, "multi-label", LABELS)


def _harvested(tmp_path: Path, workspace: Workspace, reg: Registry) -> str:
    """A parent version (60 fixed test images) and a harvest of 200 production images."""
    sizes = {"train": 40, "val": 10, "test": 60}
    npz = tmp_path / "chest.npz"
    np.savez(
        npz,
        **{f"{s}_images": _images(n, i) for i, (s, n) in enumerate(sizes.items())},
        **{f"{s}_labels": _truth(n) for s, n in sizes.items()},
    )
    base = ingest(workspace, reg, "chest", npz, class_names=LABELS, task_type="multi-label")
    parent = find_version(reg, base.ref)
    new = NewImages(_images(200, 7), _truth(200), [f"{i:032x}" for i in range(200)])
    got = harvest_version(workspace, reg, parent, "chest", new, {"model": "champ"})
    return got.ref


def _champion_and_challenger(
    tmp_path: Path,
    workspace: Workspace,
    reg: Registry,
    *,
    champ: tuple[float, ...],
    chal: tuple[float, ...],
) -> str:
    """The harvest of :func:`_harvested` (its ref, returned), the model ``champ`` answering
    ``champ`` on slot ``chest`` and the challenger ``chal`` answering ``chal``, both trained
    on it."""
    data = _harvested(tmp_path, workspace, reg)
    vid = find_version(reg, data).id
    _model(reg, tmp_path, "champ", champ, vid)
    _model(reg, tmp_path, "chal", chal, vid)
    put_on_slot(reg, workspace, "chest", "champ", kind="initial")
    return data


def test_a_challenger_better_label_wise_but_never_by_exact_match_passes(
    tmp_path: Path, workspace: Workspace, reg: Registry, wide_console: None
) -> None:
    data = _champion_and_challenger(tmp_path, workspace, reg, champ=POOR, chal=GOOD)

    out = CliRunner().invoke(app, ["deploy", "promote", "chest", "chal", "--data", data])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "passed" in text and "paired t" in text and "0.500 → 0.750" in text, text
    assert champion(reg, "chest").model == "chal"  # type: ignore[union-attr]

    ev = gate_decisions(reg, "chest")[-1].evidence
    assert ev["test"] == PAIRED_T and ev["passed"] and ev["p_value"] < 1e-6
    prod = ev["production"]
    assert prod["challenger_accuracy"] == 0.75 and prod["champion_accuracy"] == pytest.approx(
        0.5, abs=0.1
    )
    assert prod["champion_better"] == 0 and prod["challenger_better"] > 0
    assert ev["fixed_test"]["n"] == 60 and ev["lower_bound"] > 0
    history = CliRunner().invoke(app, ["deploy", "history", "chest"])
    assert history.exit_code == 0 and "paired t (label-wise)" in history.output, history.output
    lineage = CliRunner().invoke(app, ["lineage", "chal"])
    assert "paired t (label-wise)" in " ".join(lineage.output.split()), lineage.output


def test_a_challenger_worse_label_wise_is_refused_and_the_loop_stage_names_the_test(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    data = _champion_and_challenger(tmp_path, workspace, reg, champ=GOOD, chal=POOR)
    gate, entry = promote_with_gate(reg, workspace, "chest", "chal", data_ref=data)
    assert gate is not None and entry is None
    r = gate.result
    assert not r.passed and not r.noninferior and not r.superior and r.test == PAIRED_T
    assert "not shown non-inferior" in r.reason and "paired t p = 1" in r.reason

    run_id, _ = open_run(reg, "chest", champion_id=None, params={})
    ctx = LoopContext(
        reg,
        workspace,
        run_id,
        "chest",
        {"settings": {}},
        {"ingest": {"ref": data}, "challenger": {"model": "chal"}},
        lambda _line: None,
    )
    out = gate_stage(ctx)
    assert out["test"] == PAIRED_T and "stop" in out
    (line,) = [x for x in stage_lines("gate", out) if "test" in x]
    assert f"test {PAIRED_T}" in line and "production_accuracy [0.75, 0.5" in line
    # Read back within the loop run: the same decision, with its test.
    again = run_gate(reg, "chest", "chal", loop_run_id=run_id)
    assert again.id == out["gate_id"] and again.result.test == PAIRED_T
    assert again.result.production.challenger_accuracy == pytest.approx(0.5, abs=0.1)


def test_a_missing_output_scores_zero_and_a_single_label_model_is_refused(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    data = _harvested(tmp_path, workspace, reg)
    vid = find_version(reg, data).id
    silent = _model(reg, tmp_path, "silent", (1, float("nan"), 0, 0), vid)
    assert np.isnan(labelwise_accuracy(silent, _images(3, 1), _truth(3))).all()
    with pytest.raises(InputError, match="answers 4 labels per image but the gate's data has 3"):
        labelwise_accuracy(silent, _images(3, 1), _truth(3)[:, :3])
    _model(reg, tmp_path, "champ", GOOD, vid)
    put_on_slot(reg, workspace, "chest", "champ", kind="initial")
    gate, _ = promote_with_gate(reg, workspace, "chest", "silent", data_ref=data)
    assert gate is not None and not gate.result.passed
    assert "no output from the challenger for 60 (scored 0)" in gate.result.reason
