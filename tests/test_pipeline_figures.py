"""The pipeline's ``figures`` stage draws the latent figures by the rule of ``pomlia plot
latent`` and the report: no means figure (Figure 6) of a single dataset, its reason logged
and recorded instead."""

from __future__ import annotations

import json
from pathlib import Path

from pomlia_hpc.cluster import Executor
from pomlia_hpc.fingerprint.extract import extract
from pomlia_hpc.pipeline.spec import parse_pipeline
from pomlia_hpc.pipeline.stage import StageContext
from pomlia_hpc.pipeline.stages_fingerprint import FIGURES
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder

ONE_SET = "latent_means.png not written: the mean embeddings need 2 data sets"


def _context(ws: Workspace, reg: Registry, names: list[str]) -> tuple[StageContext, list[str]]:
    """A pipeline of ``names`` whose data and encoder stages are done (records as a run
    writes them), with an untrained encoder ``e`` and its embeddings of every dataset."""
    refs = [make_dataset(ws, reg, n, sizes=(24, 8, 16), seed=i) for i, n in enumerate(names)]
    make_encoder(ws, reg, "e", latent_dim=2)
    extract(reg, ws, "e", refs, executor=Executor.from_profile("debug", ws.jobs, reg))
    data = {
        "name": "p",
        "datasets": [{"name": n, "medmnist": "bloodmnist"} for n in names],
        "encoder": {"name": "e", "latent_dim": 2},
        "figures": {"latent": True},
    }
    spec = parse_pipeline(data, "p.yaml", ws.home)
    logged: list[str] = []
    ctx = StageContext(spec, ws, reg, log=logged.append)
    outputs = {
        "data": {"versions": dict(zip(names, refs, strict=True))},
        "encoder": {"encoder": "e"},
    }
    for stage, out in outputs.items():
        ctx.record_path(stage).parent.mkdir(parents=True, exist_ok=True)
        ctx.record_path(stage).write_text(json.dumps({"status": "done", "outputs": out}))
    return ctx, logged


def test_one_dataset_gets_the_scatter_and_the_reason_not_the_means_figure(
    workspace: Workspace, reg: Registry
) -> None:
    """The stage drew latent_means.png of one dataset (a PCA of one point, rounding noise)
    where `pomlia plot latent` writes the scatter only and says why; a means figure an earlier
    run left in the folder (of other datasets) is removed, so it is not read as this run's."""
    ctx, logged = _context(workspace, reg, ["blood"])
    folder = workspace.path("reports", "pipelines", "p")
    folder.mkdir(parents=True)
    (folder / "latent_means.png").write_bytes(b"an earlier run's figure")
    out = FIGURES.run(ctx)
    assert (folder / "latent_scatter.png").is_file() and not (folder / "latent_means.png").exists()
    assert "means" not in out and out["means_note"] == ONE_SET
    assert Path(out["scatter"]) == folder / "latent_scatter.png"
    assert f"  {ONE_SET}" in logged
    assert FIGURES.still_there(ctx, out)


def test_two_datasets_get_both_figures(workspace: Workspace, reg: Registry) -> None:
    ctx, logged = _context(workspace, reg, ["blood", "derma"])
    out = FIGURES.run(ctx)
    folder = workspace.path("reports", "pipelines", "p")
    assert out["means"] == str(folder / "latent_means.png") and "means_note" not in out
    assert Path(out["means"]).is_file() and not any(ONE_SET in line for line in logged)
