"""The report's Recommendations page says what `recommend` says: each strategy's note,
whether its cost is measured or estimated, and a failure rate only where there is one."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from pomlia_hpc.registry import Recommendation, Registry
from pomlia_hpc.report import build_report
from pomlia_hpc.workspace import Workspace

ALEXNET = {"arch": "AlexNet", "init": "pretrained", "mode": "full", "img_size": 224}


def _strategy(rank: int, basis: str, rate: float | None, note: str) -> dict[str, Any]:
    """A strategy as `recommend --json` writes it (one recorded by the tester)."""
    return {
        "rank": rank,
        "strategy": {**ALEXNET, "extra_data": "none"},
        "expected": 0.95559,
        "spread": 0.02255,
        "expected_regret": 0.183,
        "cost": {"wall_s": 30.3, "gpu_hours": 0.0084, "basis": basis},
        "failure_rate": rate,
        "evidence": [{"dataset": "breastmnist", "value": 0.9386, "weight": 0.34, "runs": []}],
        "automl": None,
        "note": note,
        "hparam_ranges": {},
    }


def _page(reg: Registry, ws: Workspace, tmp_path: Path, *strategies: dict[str, Any]) -> str:
    with reg.session() as s:
        s.add(
            Recommendation(
                task="pneu",
                learner="knn",
                inputs={"metric": "auc", "n_datasets": 5},
                output={"strategies": list(strategies), "similar": [], "note": "few runs"},
            )
        )
    res = build_report(reg, ws, tmp_path / "r")
    text = (res.folder / "recommendations.html").read_text()
    text = text[text.index("<main>") :]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def test_notes_and_the_cost_basis_are_shown_without_an_empty_failure_column(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """The page dropped the notes and "(estimate)", and showed an always-empty column."""
    page = _page(
        reg,
        workspace,
        tmp_path,
        _strategy(1, "estimate", None, "architecture 'AlexNet' is not in the AutoML space"),
    )
    assert "→ architecture 'AlexNet' is not in the AutoML space" in page
    assert "30 (estimate)" in page and "Note: few runs" in page
    assert "failure rate" not in page and "expected auc" in page


def test_a_failure_rate_is_shown_where_the_registry_has_one(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    page = _page(
        reg,
        workspace,
        tmp_path,
        _strategy(1, "measured", 0.25, ""),
        _strategy(2, "estimate", None, ""),
    )
    assert "failure rate" in page and " 0.25 " in page and "no runs" in page
    assert "30 (measured)" in page
