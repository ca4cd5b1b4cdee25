"""The monitoring reference: written at export from the model's validation split, equal to
what the server logs for the same images, and recomputable with ``pomlia monitor reference``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_npz
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import demo_labels, save_demo_checkpoint
from pomlia_hpc.serve.export import export_model
from pomlia_hpc.serve.reference import FORMAT, REFERENCE_FILE, read_reference, write_reference
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import log_predictions


def _dataset(
    ws: Workspace,
    reg: Registry,
    tmp_path: Path,
    name: str = "blood",
    class_names: list[str] | None = None,
) -> tuple[int, np.ndarray, np.ndarray]:
    """A bloodmnist look-alike named ``name``, with the demo model's 8 class names unless
    ``class_names`` are given (then its labels are cut to their number)."""
    names = class_names or demo_labels("multi-class", 8)
    arrays = {}
    for split, n in (("train", 20), ("val", 24), ("test", 5)):
        x, y = make_split("bloodmnist", n, seed=1, size=28, split=split)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y % len(names)
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    rec = ingest(ws, reg, name, path, class_names=names, workers=1)
    return rec.id, arrays["val_images"], arrays["val_labels"][:, 0]


def test_export_writes_the_reference_the_server_would_log(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dv_id, val_x, val_y = _dataset(workspace, reg, tmp_path)
    ckpt = save_demo_checkpoint(tmp_path / "m.pt", channels=3, num_classes=8)
    register_model(reg, "blood-model", ckpt, lineage={"dataset_version_id": dv_id})
    res = export_model(reg, workspace, "blood-model")
    assert res.reference == res.bundle.root / REFERENCE_FILE
    ref = read_reference(res.reference)
    assert ref.n == 24 and ref.model_version == res.bundle.version
    assert ref.source.startswith("blood@") and ref.source.endswith("[val]")
    np.testing.assert_array_equal(ref.labels, val_y)
    # The server, given the same validation images, logs exactly the reference's vectors and
    # outputs (same fingerprint function, rounding, scaling and runtime).
    records = log_predictions(workspace, res.bundle.root, val_x)
    logged = np.array([r["fingerprint"] for r in records], dtype=np.float32)
    np.testing.assert_array_equal(logged, ref.fingerprints)
    assert [r["output"]["label_index"] for r in records] == ref.pred_index.tolist()
    assert records[0]["fingerprint_kind"] == ref.fingerprint_kind == "stats-thumb-v1"
    np.testing.assert_allclose(
        [max(r["output"]["probabilities"]) for r in records], ref.confidence, atol=1e-6
    )
    # Recomputing it from another split through the CLI replaces it.
    monkeypatch.setenv("POMLIA_HOME", str(workspace.home))
    res_cli = CliRunner().invoke(
        app, ["monitor", "reference", "blood-model", "--data", "blood", "--split", "test"]
    )
    assert res_cli.exit_code == 0, res_cli.output
    assert read_reference(res.reference).n == 5
    assert "[test]" in read_reference(res.reference).source
    assert read_reference(res.reference).split == "test"  # the report names it
    said = " ".join(res_cli.output.split())  # pytest-xdist's workers fold output at 80 columns
    assert "warning: the monitoring reference of blood-model holds only 5 image(s) (blood@" in said
    assert "[test]); drift tests against fewer than 100 are weak" in said
    assert said.count("monitoring reference of blood-model holds only") == 1, said  # once


def test_export_and_the_pipeline_warn_of_a_tiny_reference(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`model export`, `deploy` and the pipeline's export and monitor stages wrote a reference
    of 24 images without a word; `monitor reference` warned under 100. They share the check."""
    from pomlia_hpc.pipeline.spec import parse_pipeline
    from pomlia_hpc.pipeline.stage import StageContext
    from pomlia_hpc.pipeline.stages_learn import EXPORT

    dv_id, _, _ = _dataset(workspace, reg, tmp_path)
    ckpt = save_demo_checkpoint(tmp_path / "m.pt", channels=3, num_classes=8)
    register_model(reg, "blood-model", ckpt, lineage={"dataset_version_id": dv_id})
    monkeypatch.setenv("POMLIA_HOME", str(workspace.home))
    warning = "warning: the monitoring reference of blood-model holds only 24 image(s) (blood@"
    for args in (["model", "export", "blood-model"], ["deploy", "blood-model"]):
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 0, out.output
        said = " ".join(out.output.split())
        assert warning in said and "drift tests against fewer than 100 are weak" in said, args
        assert said.count(warning) == 1, (args, said)  # once, from the one shared helper
    spec = parse_pipeline(
        {
            "name": "p",
            "datasets": [{"name": "blood", "medmnist": "bloodmnist"}],
            "tasks": [{"name": "t", "dataset": "blood", "metric": "acc"}],
            "automl": {},
        },
        "p.yaml",
        tmp_path,
    )
    logged: list[str] = []
    ctx = StageContext(spec, workspace, reg, log=logged.append)
    ctx.record_path("automl").parent.mkdir(parents=True)
    record = {"status": "done", "outputs": {"t": {"model": "blood-model"}}}
    ctx.record_path("automl").write_text(json.dumps(record))
    EXPORT.run(ctx)
    assert any(line.strip().startswith(warning) for line in logged), logged


def test_a_data_set_with_other_classes_does_not_replace_the_reference(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2-class data set passed for an 8-class model replaced its good reference, and
    `monitor run` then reported OK against it; so did one with other class names."""
    dv_id, _, _ = _dataset(workspace, reg, tmp_path)
    _dataset(workspace, reg, tmp_path, "two", ["a", "b"])
    _dataset(workspace, reg, tmp_path, "renamed", [f"cell{i}" for i in range(8)])
    _dataset(workspace, reg, tmp_path, "numbered", [str(i) for i in range(8)])
    ckpt = save_demo_checkpoint(tmp_path / "m.pt", channels=3, num_classes=8)
    register_model(reg, "blood-model", ckpt, lineage={"dataset_version_id": dv_id})
    res = export_model(reg, workspace, "blood-model")
    assert res.reference is not None
    before = res.reference.read_bytes()
    monkeypatch.setenv("POMLIA_HOME", str(workspace.home))
    for data, message in (
        ("two", "has 2 classes but model 'blood-model' has 8 (class_0, class_1,"),
        ("renamed", "has classes ['cell0', 'cell1',"),
    ):
        out = CliRunner().invoke(app, ["monitor", "reference", "blood-model", "--data", data])
        assert isinstance(out.exception, InputError), out.output
        assert message in str(out.exception)
        assert str(out.exception).endswith("; the monitoring reference is unchanged")
        assert res.reference.read_bytes() == before
    # Classes known only by their number (ingested without names) are compared by count.
    out = CliRunner().invoke(app, ["monitor", "reference", "blood-model", "--data", "numbered"])
    assert out.exit_code == 0, out.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown key 'colour'; valid keys: accuracy, created_at"),
        ({"n": "3"}, "bad value for 'n'"),
    ],
)
def test_a_foreign_key_in_the_reference_is_one_error_naming_it(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    meta = {
        "format": FORMAT,
        "model": "m",
        "model_version": "v",
        "fingerprint_kind": "stats-thumb-v1",
        "task_type": "multi-class",
        "label_names": ["a", "b"],
        "source": "s",
        "created_at": "2026-01-01T00:00:00+00:00",
        "n": 2,
        "accuracy": float("nan"),
    }
    arrays = {
        "fingerprints": np.zeros((2, 3), np.float32),
        "labels": np.array([0, 1]),
        "pred_index": np.array([0, 0]),
        "confidence": np.ones(2, np.float32),
    }
    path = tmp_path / REFERENCE_FILE
    write_npz(path, {"meta": np.asarray(json.dumps(meta)), **arrays})
    ref = read_reference(path)
    assert ref.label_names == ["a", "b"] and ref.created_at == meta["created_at"]
    (tmp_path / "again").mkdir()
    again = read_reference(write_reference(SimpleNamespace(root=tmp_path / "again"), ref))
    assert (again.model, again.source, again.n) == ("m", "s", 2)
    write_npz(path, {"meta": np.asarray(json.dumps(meta | change)), **arrays})
    with pytest.raises(InputError, match=f"^monitoring reference {path}: {message}"):
        read_reference(path)
