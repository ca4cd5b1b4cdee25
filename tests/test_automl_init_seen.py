"""`automl run --init-model M` refuses a model M that trained on the task's val or test
images (M trained on a version of the data whose train split held them, or started from a
model that did): every trial would be picked and scored on images its weights had learnt.
Before, it was not checked at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

import pomlia_hpc.automl.study as study_mod
from pomlia_hpc.automl.tasks import add_task
from pomlia_hpc.data.api import ingest
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import FAST, donor_model, tiny_study, tiny_task
from tests.loop_support import CLASSES, make_model
from tests.seen_support import automl_run, interrupted, leaky_copy, npz

# Trials run in this process (debug executor) set torch's thread count: put back after.
pytestmark = pytest.mark.usefixtures("wide_console", "restore_torch_threads")


def test_an_init_model_that_saw_the_tasks_val_or_test_images_is_refused(
    tmp_path: Path,
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Data set `older`: the same images, 2 of the task's val and 5 of its test images in train.
    _, task_data, other = leaky_copy(tmp_path, workspace, reg)
    leaky_model = make_model(reg, tmp_path, "leaky", 1, other.id)
    monkeypatch.setattr(study_mod, "run_study", interrupted)

    code, said = automl_run(monkeypatch, capsys, "--init-model", "leaky", "s1")
    assert code != 0
    assert (
        f"--init-model leaky has trained on 2 val and 5 test image(s) of {task_data.ref} "
        f"(learnt from the train split of {other.ref})"
    ) in said, said
    assert not study_mod.study_dir(workspace, "s1").exists()

    # A model started from `leaky` saw what it saw, though its own data is the task's.
    child = make_model(reg, tmp_path, "child", 2, task_data.id)
    with reg.session() as s:
        row = s.get(Model, child.id)
        assert row is not None
        row.lineage = {**row.lineage, "init_model_id": leaky_model.id}
    code, said = automl_run(monkeypatch, capsys, "--init-model", "child", "s2")
    assert code != 0 and "(through its init model(s) leaky)" in said, said

    # A model trained on the task's own train split is fine.
    make_model(reg, tmp_path, "fair", 3, task_data.id)
    code, said = automl_run(monkeypatch, capsys, "--init-model", "fair", "s3")
    assert code == 130 and "has trained on" not in said and "interrupted" in said, said


@pytest.mark.slow
def test_a_model_started_from_another_records_it_in_its_lineage(
    workspace: Workspace, reg: Registry
) -> None:
    """The best model's lineage named neither the model its weights started from nor its
    extra images, so nothing downstream (the gate, a later --init-model) could tell what it
    had seen beyond its training split."""
    from pomlia_hpc.automl.study import run_study
    from pomlia_hpc.models.catalog import register_model
    from pomlia_hpc.models.seen import seen_images

    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    donor = donor_model(workspace, reg)
    spec = tiny_study(
        reg,
        workspace,
        "blood",
        "warm",
        n_trials=1,
        init_model=donor,
        initial_configs=[{**FAST, "init": "model", "mode": "full"}],
    )
    result = run_study(reg, workspace, spec, poll_s=0.2)
    assert result.model_name == "warm-best"
    with reg.session() as s:
        best = s.scalar(select(Model).where(Model.name == "warm-best"))
        first = s.scalar(select(Model).where(Model.name == donor))
    assert best is not None and first is not None
    assert best.lineage["init_model_id"] == first.id
    assert seen_images(reg, best).models == ["warm-best", donor]
    # Its checkpoint records it too: a copy registered by hand was taken as trained from
    # scratch on its training split (the init model, the config and extra images dropped).
    copy = register_model(reg, "copy", best.path)
    assert copy.lineage["init_model_id"] == first.id and copy.lineage["config"]["init"] == "model"
    assert seen_images(reg, copy).models == ["copy", donor]


def test_a_model_of_the_tasks_own_train_split_is_not_refused_for_its_copies_of_test_images(
    tmp_path: Path,
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A given split may hold copies of a test image in train (ingest warns); every trial
    # trains on that train split anyway, so a model that learnt it adds nothing unseen.
    rng = np.random.default_rng(1)
    x = {s: rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8) for s, n in
         (("train", 40), ("val", 12), ("test", 12))}  # fmt: skip
    x["train"][:3] = x["test"][:3]
    task_data = ingest(workspace, reg, "scans", npz(tmp_path / "a.npz", x), class_names=CLASSES)
    add_task(reg, "t", task_data.ref, "acc")
    monkeypatch.setattr(study_mod, "run_study", interrupted)
    make_model(reg, tmp_path, "fair", 1, task_data.id)
    code, said = automl_run(monkeypatch, capsys, "--init-model", "fair", "s1")
    assert code == 130 and "has trained on" not in said and "interrupted" in said, said

    # Another version whose train split holds those copies and 2 more test images: only
    # the 2 the task's own train split does not hold count.
    leaky = {"train": np.concatenate([x["train"], x["test"][3:5]])}
    leaky |= {"val": x["val"], "test": x["test"][5:]}
    other = ingest(workspace, reg, "older", npz(tmp_path / "b.npz", leaky), class_names=CLASSES)
    make_model(reg, tmp_path, "leaky", 2, other.id)
    code, said = automl_run(monkeypatch, capsys, "--init-model", "leaky", "s2")
    assert code != 0 and f"has trained on 2 test image(s) of {task_data.ref}" in said, said
