"""`automl run --encoder E` refuses a fingerprint encoder whose self-supervised training read
the task's val or test images (`fingerprint train --split all` on the task's data, or a data
set whose train split holds copies of them): trials start from weights fitted to the very
images they are picked and scored on. Before, an encoder was taken with no check at all. A
model started from such an encoder (`init=encoder`) saw them too: `--init-model` refuses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pomlia_hpc.automl.study as study_mod
from pomlia_hpc.registry import Encoder, Model, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_encoder
from tests.loop_support import make_model
from tests.seen_support import automl_run, interrupted, leaky_copy

pytestmark = pytest.mark.usefixtures("wide_console")


def _encoder(
    workspace: Workspace, reg: Registry, name: str, version_id: int, **config: Any
) -> None:
    """An (untrained) registered encoder recorded as trained on ``version_id`` with
    ``config`` (its split, its cap on images)."""
    enc = make_encoder(workspace, reg, name)
    with reg.session() as s:
        row = s.get(Encoder, enc.id)
        assert row is not None
        row.config = {**row.config, **config}
        row.dataset_version_ids = [version_id]


def test_an_encoder_that_trained_on_the_tasks_val_or_test_images_is_refused(
    tmp_path: Path,
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Data set `older`: the same images, 2 of the task's val and 5 of its test images in train.
    _, task_data, other = leaky_copy(tmp_path, workspace, reg)
    monkeypatch.setattr(study_mod, "run_study", interrupted)

    _encoder(workspace, reg, "all_rows", task_data.id, split="all")
    code, said = automl_run(monkeypatch, capsys, "--encoder", "all_rows", "s1")
    assert code != 0
    assert (
        f"--encoder all_rows has trained on 12 val and 12 test image(s) of {task_data.ref} "
        f"(its self-supervised training read every row of {task_data.ref})"
    ) in said, said
    assert "--split train" in said, said
    assert not study_mod.study_dir(workspace, "s1").exists()

    # Only to find extra images, none of its weights reach a trial: kept, without init=encoder.
    code, said = automl_run(monkeypatch, capsys, "--encoder", "all_rows", "x1", "--extra-data")
    assert code == 130, said
    assert "warning: --encoder all_rows has trained on 12 val and 12 test image(s)" in said
    assert "init=encoder is not offered" in said, said
    spec = study_mod.load_spec(workspace, "x1")
    assert spec.encoder is None and spec.space.encoder_arch is None and spec.space.extra_data
    assert spec.options.encoder == "all_rows"

    _encoder(workspace, reg, "copies", other.id)
    code, said = automl_run(monkeypatch, capsys, "--encoder", "copies", "s2")
    assert code != 0
    assert (
        f"--encoder copies has trained on 2 val and 5 test image(s) of {task_data.ref} "
        f"(its self-supervised training read the train split of {other.ref})"
    ) in said, said

    # A model started from that encoder learnt what it learnt, though its own data is fair.
    model = make_model(reg, tmp_path, "warm", 1, task_data.id)
    with reg.session() as s:
        row = s.get(Model, model.id)
        enc = s.query(Encoder).filter_by(name="copies").one()
        assert row is not None
        row.lineage = {**row.lineage, "encoder_id": enc.id, "config": {"init": "encoder"}}
    code, said = automl_run(monkeypatch, capsys, "--init-model", "warm", "s3")
    assert code != 0
    assert "--init-model warm has trained on 2 val and 5 test image(s)" in said, said
    assert "encoder(s) copies" in said, said

    # Only the first 40 rows of the other data set (the task's own train images): fair, as
    # is an encoder of the task's own train split.
    _encoder(workspace, reg, "capped", other.id, max_images_per_dataset=40)
    _encoder(workspace, reg, "own", task_data.id)
    for i, name in enumerate(("capped", "own")):
        code, said = automl_run(monkeypatch, capsys, "--encoder", name, f"ok{i}")
        assert code == 130 and "has trained on" not in said and "interrupted" in said, said
