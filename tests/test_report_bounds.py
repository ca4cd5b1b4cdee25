"""The report's Models, Deployments and Pipelines pages are bounded: the newest rows, with a
line saying how many older ones are left out and how to see them all (as the monitor page)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.registry import Deployment, Model, Registry
from pomlia_hpc.report import build_report, pages_learn, pages_ops
from pomlia_hpc.workspace import Workspace


def _rows(browser: Any, table: int) -> list[str]:
    """The first cell of each body row of the page's ``table``-th table (0-based)."""
    return list(
        browser.driver.execute_script(
            "return Array.from(document.querySelectorAll('table')[arguments[0]]"
            ".querySelectorAll('tbody tr')).map(r => r.cells[0].innerText)",
            table,
        )
    )


def test_models_deployments_and_pipelines_list_the_newest_and_say_the_rest(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    browser: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Models page listed every model and deployment ever recorded, the Pipelines page
    every pipeline ever run: a nightly loop made them grow for good."""
    monkeypatch.setattr(pages_learn, "MAX_MODEL_ROWS", 2, raising=False)
    monkeypatch.setattr(pages_learn, "MAX_DEPLOYMENT_ROWS", 2, raising=False)
    monkeypatch.setattr(pages_ops, "MAX_PIPELINES", 2, raising=False)
    with reg.session() as s:
        models = [Model(name=f"m{i}", path=f"/m{i}.pt", lineage={}) for i in range(4)]
        s.add_all(models)
        s.flush()
        # deployments of the oldest model too: named although that model is not listed
        s.add_all(Deployment(model_id=models[i].id, bundle_path=f"/b{i}") for i in (0, 0, 1))
    root = workspace.path("pipelines")
    for age, name in enumerate(("c-new", "b-mid", "a-old")):
        (root / name / "stages").mkdir(parents=True)
        (root / name / "stages" / "ingest.json").write_text(json.dumps({"status": "done"}))
        run = root / name / "run.json"
        run.write_text(json.dumps({"order": ["ingest"]}))
        os.utime(run, (1_800_000_000 - age * 3600,) * 2)  # c-new ran last, a-old first
    res = build_report(reg, workspace, tmp_path / "r")

    seen = browser.check(res.folder / "models.html")
    assert not seen.console_errors
    assert _rows(browser, 0) == ["m2", "m3"]  # the newest 2, oldest first
    assert _rows(browser, 1) == ["2", "3"]
    models_cell = browser.driver.execute_script(
        "return document.querySelectorAll('table')[1].querySelector('tbody tr').cells[1].innerText"
    )
    assert models_cell == "m0"
    assert "The newest 2 of 4 models; 2 older not listed: pomlia model list --limit 4." in seen.text
    assert (
        f"The newest 2 of 3 deployments; 1 older not listed: each has its folder under "
        f"{workspace.path('models')}/MODEL/deploy/." in seen.text
    )

    seen = browser.check(res.folder / "pipelines.html")
    assert not seen.console_errors
    headings = browser.driver.execute_script(
        "return Array.from(document.querySelectorAll('h2')).map(h => h.innerText)"
    )
    assert headings == ["Pipeline b-mid", "Pipeline c-new"]  # the newest 2, by name
    assert (
        "The newest 2 of 3 pipelines (by their last run); 1 older not listed: pomlia pipeline "
        f"status NAME shows one, their folders are under {root}/." in seen.text
    )
