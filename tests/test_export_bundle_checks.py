"""`model export` and `serve` on damaged bundles, unwritable workspace folders, failed exports
and data sets whose images are not square."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import pomlia_hpc.serve.export as export_mod
from pomlia_hpc.automl.tasks import add_task
from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.errors import InputError
from pomlia_hpc.models.catalog import register_model, update_card
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.serve.demo import save_demo_checkpoint
from pomlia_hpc.serve.export import sha256_file
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main


def pomlia(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[Any, str]:
    """``pomlia ARGS...`` as the console script runs it, in this process (the workspace
    fixture's, through POMLIA_HOME): its exit code and what it wrote on stdout and stderr.
    A process of its own would cost seconds of imports for a refusal made before anything
    is served or written."""
    code, out, err = pomlia_main(monkeypatch, capsys, *args)
    return code, out + err


def exported_model(ws: Workspace, tmp_path: Path, name: str = "grade") -> Path:
    """Register and export a demo model ``name``; its bundle folder."""
    reg = Registry.open(ws.db_url)
    try:
        ckpt = save_demo_checkpoint(tmp_path / f"{name}.pt", num_classes=3)
        register_model(reg, name, ckpt)
    finally:
        reg.dispose()
    res = CliRunner().invoke(app, ["model", "export", name])
    assert res.exit_code == 0, res.output
    (bundle,) = ws.path("models", name, "bundles").iterdir()
    return bundle


@pytest.mark.usefixtures("wide_console")
@pytest.mark.timeout(120)  # a serve that did not refuse would serve in this process until then
def test_a_damaged_bundle_is_refused_by_serve_and_rebuilt_by_export(
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = exported_model(workspace, tmp_path)
    onnx = bundle / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    code, said = pomlia(monkeypatch, capsys, "serve", "grade", "--port", "0")
    assert code != 0 and "Traceback" not in said, said
    out = " ".join(said.split())
    assert "model.onnx does not match its SHA-256 in card.json" in out
    assert "pomlia model export grade" in out
    runner = CliRunner()
    res = runner.invoke(app, ["model", "export", "grade"])
    assert res.exit_code == 0, res.output
    assert "rebuilt the existing bundle" in res.output and "model.onnx" in res.output
    card = (bundle / "card.json").read_text()
    assert sha256_file(onnx) in card
    onnx.unlink()
    res = runner.invoke(app, ["model", "export", "grade"])
    assert res.exit_code == 0, res.output
    assert "model.onnx is missing" in " ".join(res.output.split()) and onnx.is_file()
    # A removal of the bundle cut short (a kill while a failed export cleaned up) took its card
    # and left the rest: refused as "exists without card.json; remove it", now rebuilt.
    (bundle / "card.json").unlink()
    res = runner.invoke(app, ["model", "export", "grade"])
    assert res.exit_code == 0, res.output
    assert "it has no card.json" in " ".join(res.output.split()), res.output
    assert (bundle / "card.json").is_file()


@pytest.mark.usefixtures("wide_console")
@pytest.mark.timeout(120)  # a serve that did not refuse would serve in this process until then
def test_unwritable_log_and_tmp_folders_are_one_line_each(
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    exported_model(workspace, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, text = pomlia(
        monkeypatch, capsys, "serve", "grade", "--port", "0", "--log-dir", str(blocker / "x")
    )
    assert code != 0 and "Traceback" not in text, text
    assert f"prediction log folder {blocker / 'x'} cannot be written" in " ".join(text.split())
    # The workspace's tmp unusable (a file where the folder should be): export says so.
    shutil.rmtree(workspace.tmp, ignore_errors=True)
    workspace.tmp.write_text("")
    code, text = pomlia(monkeypatch, capsys, "model", "export", "grade")
    assert code != 0 and "Traceback" not in text, text
    assert f"workspace folder {workspace.tmp} cannot be written" in " ".join(text.split())


def test_a_failed_export_leaves_no_bundle(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry.open(workspace.db_url)
    ckpt = save_demo_checkpoint(tmp_path / "m.pt", num_classes=3)
    register_model(reg, "m", ckpt)

    def broken_reference(*args: Any, **kwargs: Any) -> None:
        raise InputError("reference data: images of another shape")

    monkeypatch.setattr(export_mod, "reference_for_model", broken_reference)
    with pytest.raises(InputError, match="another shape"):
        export_mod.export_model(reg, workspace, "m")
    bundles = workspace.path("models", "m", "bundles")
    assert not bundles.exists() or not any(bundles.iterdir())
    reg.dispose()


def test_a_data_set_of_non_square_images_is_refused_before_any_training(
    workspace: Workspace, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for label in ("a", "b"):
            (tmp_path / "img" / split / label).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (24, 40), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / "img" / split / label / f"{i}.png")
    reg = Registry.open(workspace.db_url)
    rec = ingest(workspace, reg, "wide", tmp_path / "img", workers=1)
    with pytest.raises(InputError, match="24 px high and 40 px wide: expected square images"):
        add_task(reg, "t", f"wide@{rec.version}", "acc")
    reg.dispose()


@pytest.mark.usefixtures("wide_console")
def test_a_card_edited_since_its_export_is_refused_by_deploy_and_serve(
    workspace: Workspace, tmp_path: Path
) -> None:
    """card.json itself had no checksum: a card whose class names (or metric, or SHA-256 list)
    were edited after the export deployed and served silently. The bundle's card.sha256 and
    the registry's record of it refuse it now, in one line, even when card.sha256 was fixed
    up with the card; `model export` rebuilds it."""
    bundle = exported_model(workspace, tmp_path)
    card_file = bundle / "card.json"
    card = json.loads(card_file.read_text())
    card_file.write_text(json.dumps({**card, "label_names": card["label_names"][::-1]}))
    runner = CliRunner()
    for args in (["deploy", "grade"], ["serve", str(bundle), "--port", "0"]):
        res = runner.invoke(app, args)
        assert isinstance(res.exception, InputError), (args, res.output)
        said = " ".join(str(res.exception).split())
        assert "card.json does not match its SHA-256 in card.sha256" in said, said
        assert "pomlia model export grade" in said, said
    # card.sha256 made to fit the edit: the registry's record of the card still refuses it.
    (bundle / "card.sha256").write_text(f"{sha256_file(card_file)}  card.json\n")
    for args in (["deploy", "grade"], ["serve", "grade", "--port", "0"]):
        res = runner.invoke(app, args)
        assert isinstance(res.exception, InputError), (args, res.output)
        assert "not the card the export recorded" in str(res.exception), res.output
    assert not workspace.path("models", "grade", "deploy").exists()
    res = runner.invoke(app, ["model", "export", "grade"])
    assert res.exit_code == 0 and "rebuilt the existing bundle" in res.output, res.output
    assert json.loads(card_file.read_text())["label_names"] == card["label_names"]


@pytest.mark.usefixtures("wide_console")
def test_a_deployment_written_before_card_sha256_is_reused_after_the_rebuild(
    workspace: Workspace, tmp_path: Path
) -> None:
    """A bundle exported before card.sha256 existed is rebuilt by the next `model export`
    (a pipeline's export stage runs it every time), byte for byte but for the new card.sha256;
    the deploy directory written from the old bundle then "holds a bundle other than" the
    model's, and `deploy` (the pipeline's next stage) was refused, exit 2. The rebuild also
    dropped the bundle's monitoring reference, one `monitor reference --data` had made (the
    export can make one only from the training data set it knows)."""
    bundle = exported_model(workspace, tmp_path)
    (bundle / "card.sha256").unlink()  # as an older version exported it, and recorded it
    (bundle / "monitor-reference.npz").write_bytes(b"made by `monitor reference --data`")
    reg = Registry.open(workspace.db_url)
    try:
        with reg.session() as s:
            row = s.query(Model).one()
            model_id, card = row.id, dict(row.card)
        card["export"] = {k: v for k, v in card["export"].items() if k != "card_sha256"}
        update_card(reg, model_id, card)
    finally:
        reg.dispose()
    runner = CliRunner()
    first = runner.invoke(app, ["deploy", "grade"])
    assert first.exit_code == 0, first.output
    res = runner.invoke(app, ["model", "export", "grade"])
    assert res.exit_code == 0 and "no checksum" in " ".join(res.output.split()), res.output
    assert (bundle / "card.sha256").is_file()
    assert (bundle / "monitor-reference.npz").read_bytes().startswith(b"made by")
    again = runner.invoke(app, ["deploy", "grade"])
    assert again.exit_code == 0 and "reused" in again.output, again.output
