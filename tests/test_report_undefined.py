"""An undefined metric (not recorded, NaN, infinite) reads "n/a" in the report: not an empty
cell, which reads as "not filled in", and not Python's "nan"."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from pomlia_hpc.registry import (
    DatasetVersion,
    Model,
    MonitorReport,
    Recommendation,
    Registry,
    Run,
    Task,
)
from pomlia_hpc.report import build_report
from pomlia_hpc.report.html import NA, fmt, metric_text
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder

NAN = float("nan")


def _text(page: Path) -> str:
    """The page's visible text, tags dropped, spaces folded."""
    body = page.read_text()
    body = body[body.index("<main>") :]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def _rows(page: Path) -> list[dict[str, str]]:
    """The rows of every table on ``page`` as {header: cell text}."""
    out = []
    for tab in re.findall(r"<table>(.*?)</table>", page.read_text(), re.S):
        rows = [
            [
                " ".join(html.unescape(re.sub(r"<[^>]+>", " ", c)).split())
                for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
            ]
            for row in re.findall(r"<tr>(.*?)</tr>", tab, re.S)
        ]
        out += [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    return out


def test_the_helpers_say_n_a_for_undefined_numbers() -> None:
    assert [metric_text(x) for x in (None, NAN, float("inf"), "x", True)] == [NA] * 5
    assert metric_text(0.81234) == "0.812" and metric_text(1, 1) == "1.0"
    assert fmt(NAN) == NA and fmt(-float("inf")) == NA and fmt(None) == "" and fmt(0.5) == "0.5"


@pytest.fixture
def undefined(workspace: Workspace, reg: Registry) -> tuple[Workspace, Registry]:
    """A study whose finished trials have no, a NaN and an infinite validation metric and no
    test metric; a model's monitor report with a NaN accuracy and a NaN drift score; an
    untrained encoder (no loss); a recommendation without an expected value; a clustering
    whose ARI is undefined."""
    make_dataset(workspace, reg, "pneu", "pneumoniamnist", sizes=(24, 8, 16))
    make_encoder(workspace, reg, "enc", latent_dim=2)
    with reg.session() as s:
        version = s.scalar(select(DatasetVersion.id))
        task = Task(name="pneu", dataset_version_id=version, metric="auc", task_type="binary")
        s.add(task)
        s.flush()
        for objective in (None, NAN, float("inf")):
            metrics = {"epochs": 1, "test": {"auc": NAN if objective is None else None}}
            if objective is not None:
                metrics["objective"] = objective
            s.add(
                Run(task_id=task.id, study="st", config={}, budget=1, status="ok", metrics=metrics)
            )
        model = Model(name="m", task_id=task.id, path="/nowhere.pt", lineage={})
        s.add(model)
        s.flush()
        s.add(
            MonitorReport(
                model_id=model.id,
                drift={"score": NAN},
                metrics={"status": "ok", "performance": {"labels": 0, "accuracy": NAN}},
                triggered=False,
                created_at=datetime.now(UTC),
            )
        )
        s.add(
            Recommendation(
                task="pneu",
                inputs={"metric": "auc"},
                output={
                    "strategies": [
                        {
                            "rank": 1,
                            "strategy": {"arch": "small_cnn"},
                            "expected": None,
                            "failure_rate": NAN,
                            "evidence": [{"dataset": "blood", "value": NAN}],
                        }
                    ]
                },
            )
        )
    clustering = workspace.path("reports", "pipelines", "p", "clustering.json")
    clustering.parent.mkdir(parents=True)
    clustering.write_text(
        json.dumps(
            {
                "linkage": "average",
                "encoder": "enc",
                "latent_dim": 2,
                "ari": NAN,
                "baseline_ari": None,
                "groups": [["pneu"]],
                "clusters": {"pneu": 0},
                "baseline_clusters": {"pneu": 0},
            }
        )
    )
    return workspace, reg


def test_undefined_metrics_read_n_a(undefined: tuple[Workspace, Registry], tmp_path: Path) -> None:
    """Undefined validation and test metrics were empty cells or "nan", a study without a
    defined metric had an empty best, an encoder without a loss an empty final loss, and a NaN
    accuracy, drift score, expected value, evidence or ARI read "nan"."""
    ws, reg = undefined
    res = build_report(reg, ws, tmp_path / "r")
    folder = res.folder
    for page in res.pages:
        assert not re.search(r"\bnan\b|\binf\b", _text(page), re.I), (page.name, _text(page))
    studies = _rows(folder / "studies.html")
    assert studies[0]["best validation metric"] == NA
    trials = [r for r in studies if "val auc" in r]
    assert [(t["val auc"], t["test auc"]) for t in trials] == [(NA, NA)] * 3
    encoders = [r for r in _rows(folder / "fingerprints.html") if "final loss" in r]
    assert [e["final loss"] for e in encoders] == [NA]
    fingerprints = _text(folder / "fingerprints.html")
    ari = f"adjusted Rand index {NA} ; explicit-fingerprint baseline {NA}."  # a tag before ;
    assert ari in fingerprints, fingerprints
    monitor = [r for r in _rows(folder / "monitor.html") if "labels" in r]
    assert monitor[0]["labels"] == f"0, accuracy {NA}" and monitor[0]["tests"] == f"score {NA}"
    strategies = [r for r in _rows(folder / "recommendations.html") if "evidence" in r]
    assert strategies[0]["expected auc"] == NA and strategies[0]["evidence"] == f"blood {NA}"
    assert strategies[0]["failure rate"] == NA
