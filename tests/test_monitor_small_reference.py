"""A model trained on scarce data has a tiny monitoring reference (its val split: 2 images).
The MMD's bootstrap null resamples the reference, so against 2 fingerprints every window of
the same data looked drifted: `monitor run` raised an alarm and a retrain request on the first
night. The input-drift tests are skipped below 10 reference fingerprints, with a note."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.monitor.checks import MIN_VECTORS, planned_tests, run_checks
from pomlia_hpc.monitor.logread import LogWindow
from pomlia_hpc.registry import Registry, RetrainRequest
from pomlia_hpc.serve.reference import Reference
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import demo_model, images, log_predictions


def _reference(n: int, rng: np.random.Generator) -> Reference:
    return Reference(
        model="m",
        model_version="v",
        fingerprint_kind="test",
        task_type="multi-class",
        label_names=["a", "b"],
        source="d@1 [val]",
        fingerprints=rng.normal(size=(n, 16)).astype(np.float32),
        labels=np.arange(n) % 2,
        pred_index=np.arange(n) % 2,
        confidence=np.full(n, 0.7),
        created_at="",
    )


def _window(rng: np.random.Generator) -> LogWindow:
    since = datetime(2026, 12, 1, tzinfo=UTC)
    win = LogWindow(model="m", version="v", since=since, until=since + timedelta(days=1))
    win.vectors = list(rng.normal(size=(30, 16)).astype(np.float32))
    win.pred_index = [0, 1] * 15
    win.confidence.extend([0.7] * 30)
    return win


def test_a_reference_below_the_minimum_skips_the_input_tests_with_a_note() -> None:
    rng = np.random.default_rng(0)
    out = run_checks(_window(rng), _reference(2, rng), n_perm=100)
    assert not out.alarm
    assert {t.name for t in out.tests} == {"labels", "confidence"}
    assert (
        "input-drift tests skipped: the reference (d@1 [val]) holds 2 fingerprint(s), at least "
        f"{MIN_VECTORS} needed (pomlia monitor reference m --split SPLIT or --data DATASET "
        "makes a larger one)"
    ) in out.notes
    # from the minimum on, they run
    out = run_checks(_window(rng), _reference(MIN_VECTORS, rng), n_perm=100)
    assert {"mmd", "ks", "classifier"} <= {t.name for t in out.tests}


def test_the_line_said_before_the_tests_names_only_those_that_run() -> None:
    """`monitor run` said "testing (MMD, KS, classifier, ...)" and then skipped the input-drift
    tests of a small reference, in the same run."""
    rng = np.random.default_rng(0)
    assert planned_tests(_window(rng), _reference(2, rng)) == ["labels", "confidence"]
    win = _window(rng)
    win.labels.tested.append((0, 1, "2026-12-01T01:00:00+00:00"))
    ref = _reference(MIN_VECTORS, rng)
    # a reference of an older version keeps no probabilities: accuracy alone is tested
    assert planned_tests(win, ref, "auc")[-1] == "accuracy"
    with_probs = dataclasses.replace(ref, probabilities=np.full((MIN_VECTORS, 2), 0.5))
    assert planned_tests(win, with_probs, "auc") == [
        "MMD",
        "KS",
        "classifier",
        "labels",
        "confidence",
        "auc and accuracy",
    ]


def test_monitor_run_of_a_model_with_a_two_image_reference_raises_no_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    bundle = demo_model(reg, ws, n_ref=2)
    x, _ = images(40, seed=5, split="val")  # the reference's own distribution
    log_predictions(ws, bundle, x)
    monkeypatch.setenv("POMLIA_HOME", str(home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    res = CliRunner().invoke(app, ["monitor", "run", "blood", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{") :])
    assert not report["alarm"] and report["status"] == "ok", report["reasons"]
    assert not {"mmd", "ks", "classifier"} & {t["name"] for t in report["tests"]}
    assert any("the reference (" in n and "holds 2 fingerprint(s)" in n for n in report["notes"])
    with reg.session() as s:
        assert s.scalar(select(func.count()).select_from(RetrainRequest)) == 0
    # the note as printed: rich took the source's "[val]" for markup and dropped it
    res = CliRunner().invoke(app, ["monitor", "run", "blood"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "the reference (bloodmnist look-alike [val]) holds 2 fingerprint(s)" in said, said
    reg.dispose()
