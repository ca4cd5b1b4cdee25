"""The pipeline's automl stage takes the recommend stage's warm start as
``automl run --from-recommendation`` does: the recommended architectures when ``automl.archs``
is left out; with named ``archs``, each configuration the space cannot hold is left out with
its reason, logged and kept in ``study.json``."""

from __future__ import annotations

from pathlib import Path

from pomlia_hpc.pipeline.spec import load_pipeline
from pomlia_hpc.pipeline.stage import StageContext
from pomlia_hpc.pipeline.stages_learn import open_study
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_task

REPO = Path(__file__).resolve().parents[1]
WARM = [
    {"arch": "resnet18", "init": "encoder", "mode": "full", "lr": 1e-3, "optimizer": "adamw"},
    {"arch": "small_cnn", "lr": 1e-3, "optimizer": "adamw", "batch_size": 32},
]


def _ctx(ws: Workspace, reg: Registry, lines: list[str], **automl: object) -> StageContext:
    spec = load_pipeline(REPO / "configs" / "pipelines" / "lookalikes.yaml")
    assert spec.automl is not None
    am = spec.automl.model_copy(update=automl)
    return StageContext(
        spec=spec.model_copy(update={"automl": am}),
        workspace=ws,
        registry=reg,
        log=lines.append,
        key="k" * 16,
    )


def test_a_recommended_configuration_the_named_archs_leave_out_is_logged_and_recorded(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    lines: list[str] = []
    spec, resume = open_study(_ctx(workspace, reg, lines), "p-blood", "blood", WARM, None)
    assert not resume
    assert [c["arch"] for c in spec.initial_configs] == ["small_cnn"]
    (why,) = spec.dropped_initial
    assert "entry 0" in why and "architecture 'resnet18' is not in this study's space" in why
    text = "\n".join(lines)
    assert "warm start: 1 configuration(s)" in text and f"warm start: left out {why}" in text


def test_without_named_archs_the_recommended_ones_are_the_space(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    lines: list[str] = []
    ctx = _ctx(workspace, reg, lines, archs=None, use_encoder=False)
    spec, _ = open_study(ctx, "p-blood", "blood", WARM[1:], None)
    assert spec.space.archs == ("small_cnn",)
    assert len(spec.initial_configs) == 1 and spec.dropped_initial == []
