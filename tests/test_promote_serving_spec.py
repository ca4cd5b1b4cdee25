"""A promotion the slot's servers would refuse to swap to is refused before anything moves: a
model trained on 16-bit data of another maximum than the served model's. Before, `deploy
promote` moved the link and recorded the new champion; the server refused the hot swap and
kept serving the old model, so the registry named a champion nobody served."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.automl.tasks import add_task
from pomlia_hpc.data.api import ingest
from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.gate import promote_with_gate
from pomlia_hpc.loop.promote import champion, gate_decisions, history, put_on_slot
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import save_demo_checkpoint
from pomlia_hpc.serve.export import export_model
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.slots import current_bundle, current_link
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import refused


def sixteen_bit_model(ws: Workspace, reg: Registry, root: Path, name: str, top: int) -> None:
    """Model ``name`` (untrained, grey 28 px, 2 classes) of a task on a folder of 16-bit PNGs
    whose largest value is ``top``."""
    rng = np.random.default_rng(top)
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for label in ("dim", "bright"):
            folder = root / name / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, top // 2, (28, 28)).astype(np.uint16)
                arr[0, 0] = top
                Image.fromarray(arr).save(folder / f"{i}.png")
    rec = ingest(ws, reg, f"d{name}", root / name, workers=1)
    task = add_task(reg, f"t{name}", f"d{name}@{rec.version}", "acc")
    ckpt = save_demo_checkpoint(ws.path("models", f"{name}.pt"), channels=1, num_classes=2)
    register_model(reg, name, ckpt, task_id=task.id)


def test_a_model_of_another_16_bit_maximum_is_not_promoted_over_the_served_one(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    sixteen_bit_model(workspace, reg, tmp_path, "m1", 3999)
    sixteen_bit_model(workspace, reg, tmp_path, "m2", 2999)
    promote_with_gate(reg, workspace, "p", "m1")
    link = current_link(workspace, "p")
    served = current_bundle(link)
    with LocalServer(link, workspace.path("logs")) as srv:
        # Not exported yet: refused from its training data's maximum, before any gate runs.
        said = refused("deploy", "promote", "p", "m2", "--force")
        assert (
            "model m2 cannot go on slot 'p': its 16-bit intensity scaling maximum is 2999, "
            "the served model's 3999 (m1)" in said
        )
        assert "nothing was promoted" in said and "\n" not in said
        assert gate_decisions(reg, "p") == []
        # Exported: its bundle is compared, also where a loop run promotes it (no gate here).
        export_model(reg, workspace, "m2")
        with pytest.raises(InputError, match="2999, the served model's 3999"):
            put_on_slot(reg, workspace, "p", "m2", kind="forced")
        assert current_bundle(link) == served
        assert [e.model for e in history(reg, "p")] == ["m1"]
        entry = champion(reg, "p")
        assert entry is not None and entry.model == "m1"
        model = httpx.get(srv.url + "/v1/model", timeout=30).json()
        assert model["name"] == "m1"


def test_a_model_of_another_image_size_is_refused_before_a_gate_is_recorded(
    workspace: Workspace, reg: Registry
) -> None:
    """Not exported yet, a model whose image size is not the served one's was gated (a forced
    gate recorded), exported, and only then refused, its gate marked superseded though the
    champion had not changed; it is refused from its registered card before any gate runs."""
    for name, side in (("small", 28), ("large", 64)):
        ckpt = save_demo_checkpoint(
            workspace.path("models", f"{name}.pt"), image_size=side, num_classes=2
        )
        register_model(reg, name, ckpt)
    promote_with_gate(reg, workspace, "p", "small")
    said = refused("deploy", "promote", "p", "large", "--force")
    assert (
        "model large cannot go on slot 'p': its image size is 64, the served model's 28 (small)"
        in said
    )
    assert "\n" not in said and "data scaled as" not in said  # retraining cannot help
    assert gate_decisions(reg, "p") == []
    assert [e.model for e in history(reg, "p")] == ["small"]
