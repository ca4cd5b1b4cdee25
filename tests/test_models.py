"""The models room and the shared vocabulary: names, torch-free imports, the catalog."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from pomlia_hpc.errors import InputError, NotFoundError, PomliaError
from pomlia_hpc.models.archs import ARCHITECTURES, check_arch
from pomlia_hpc.models.catalog import promote_checkpoint, register_model, resolve_model
from pomlia_hpc.models.taskmetric import model_metric, model_task
from pomlia_hpc.registry import Registry, Task
from pomlia_hpc.serve.demo import register_demo_model, save_demo_checkpoint
from pomlia_hpc.vocab import (
    FINAL_STATES,
    MEDMNIST_TASK_TYPES,
    TASK_TYPES,
    JobState,
    RunStatus,
    medmnist_task,
    normalize_task_type,
)
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import row_task

REPO = Path(__file__).resolve().parents[1]


#: The meta of a 2-class small CNN checkpoint, as save_classifier writes it.
SMALL_CNN_META = {
    "arch": "small_cnn",
    "num_classes": 2,
    "in_channels": 3,
    "image_size": 28,
    "task_type": "binary",
    "label_names": ["a", "b"],
}


def _modules_after_imports(*groups: tuple[str, ...]) -> list[set[str]]:
    """The names in ``sys.modules`` of one fresh interpreter after importing each group of
    modules in turn (one set per group, each holding what the groups before it loaded too):
    one interpreter for several checks, as each costs a Python start and the package's
    imports."""
    code = "import sys\n" + "".join(
        "".join(f"import {m}\n" for m in group) + "print(' '.join(sorted(sys.modules)))\n"
        for group in groups
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return [set(line.split()) for line in out.stdout.splitlines()]


def test_torch_free_modules_and_automl_import_neither_torch_nor_serve() -> None:
    """In a fresh interpreter: the torch-free modules load no torch, and then the automl
    modules load nothing of the server (what the torch-free ones loaded before included)."""
    torch_free, with_automl = _modules_after_imports(
        (
            "pomlia_hpc.vocab",
            "pomlia_hpc.models",
            "pomlia_hpc.models.archs",
            "pomlia_hpc.models.card",
            "pomlia_hpc.models.catalog",
            "pomlia_hpc.automl.space",
        ),
        tuple(
            f"pomlia_hpc.automl.{p.stem}"
            for p in sorted((REPO / "pomlia_hpc" / "automl").glob("*.py"))
            if p.stem != "__init__"
        ),
    )
    assert "torch" not in torch_free
    assert "pomlia_hpc.automl.engine" in with_automl
    assert not {m for m in with_automl if m.startswith("pomlia_hpc.serve")}


def test_unknown_architecture_is_one_clear_error() -> None:
    # That every name builds is tested in test_export; models.nets refuses to import when the
    # torch-free list and its builders differ.
    assert "small_cnn" in ARCHITECTURES
    with pytest.raises(InputError, match="unknown architecture 'vgg'; expected one of"):
        check_arch("vgg")


def test_vocabulary_spellings() -> None:
    assert TASK_TYPES == ("multi-class", "binary", "multi-label", "ordinal")
    for ours, theirs in zip(TASK_TYPES, MEDMNIST_TASK_TYPES, strict=True):
        assert normalize_task_type(theirs) == ours
        assert normalize_task_type(ours.upper()) == ours
        assert medmnist_task(ours) == theirs
        assert type(normalize_task_type(ours)) is str  # stored in YAML and database rows
    with pytest.raises(InputError, match="task type 'regression' is not supported"):
        normalize_task_type("regression")
    assert RunStatus.OK == "ok"
    assert JobState.COMPLETED in FINAL_STATES
    assert JobState.RUNNING not in FINAL_STATES


def test_promote_checkpoint_copies_and_registers_with_lineage(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    src = save_demo_checkpoint(tmp_path / "run" / "model.pt", num_classes=3)
    row = promote_checkpoint(reg, workspace, "m1", src, lineage={"study": "s"}, exist_ok=True)
    assert Path(row.path) == workspace.path("models", "m1.pt")
    assert Path(row.path).read_bytes() == src.read_bytes()
    assert resolve_model(reg, "m1").lineage["study"] == "s"
    # A resumed study promotes again: the model stays as it is.
    src.unlink()
    assert promote_checkpoint(reg, workspace, "m1", src, exist_ok=True).id == row.id
    with pytest.raises(PomliaError, match="already registered"):
        promote_checkpoint(reg, workspace, "m1", row.path)
    with pytest.raises(NotFoundError, match="known: m1"):
        resolve_model(reg, "m2")


def test_a_model_of_a_task_has_its_metric_on_its_card(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """The registry's card of a model registered for a task (an AutoML study's best, the loop's
    challenger) named no metric: every gate of the loop warned that the card and the task
    record differed. It names the task's id and metric, which the gate then reads silently."""
    task_id = row_task(reg, "pneumo")
    with reg.session() as s:
        s.execute(update(Task).where(Task.id == task_id).values(metric="auc"))
    ckpt = save_demo_checkpoint(tmp_path / "m.pt", num_classes=2)
    row = register_model(reg, "m", ckpt, task_id=task_id)
    assert row.card["task"]["metric"] == "auc" and row.card["task"]["id"] == task_id
    judged = model_metric("m", row.card, "the registry's card", model_task(reg, row))
    assert judged.metric == "auc" and judged.note is None
    assert "metric" not in register_model(reg, "n", ckpt).card["task"]  # a model of no task


def test_a_run_id_alone_registers_the_model_for_the_runs_task(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`model register NAME CKPT --run-id R` checked the checkpoint against the run's task,
    then registered the model with no task: `model list --task T` left it out."""
    from pomlia_hpc.registry import Run

    task_id = row_task(reg, "pneumo")
    with reg.session() as s:
        run = Run(task_id=task_id, status="ok")
        s.add(run)
        s.flush()
        run_id = int(run.id)
    ckpt = save_demo_checkpoint(tmp_path / "m.pt", num_classes=2)
    row = promote_checkpoint(reg, workspace, "m", ckpt, run_id=run_id)
    assert (row.task_id, row.run_id) == (task_id, run_id)
    assert row.card["task"]["id"] == task_id


def test_a_taken_model_name_leaves_its_checkpoint_alone(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """A new model under a registered name is refused before its checkpoint is written: the
    registered model's file stays as it was (it was overwritten, then the name refused)."""
    ckpt = save_demo_checkpoint(workspace.path("models", "d1", "checkpoint.pt"), num_classes=3)
    register_model(reg, "d1", ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(PomliaError, match="'d1' is already registered"):
        register_demo_model(reg, workspace, "d1")
    assert ckpt.read_bytes() == before
    other = save_demo_checkpoint(tmp_path / "run" / "model.pt", num_classes=5)
    promote_checkpoint(reg, workspace, "m1", ckpt)
    promoted = workspace.path("models", "m1.pt").read_bytes()
    with pytest.raises(PomliaError, match="'m1' is already registered"):
        promote_checkpoint(reg, workspace, "m1", other)
    assert workspace.path("models", "m1.pt").read_bytes() == promoted


def test_an_invalid_demo_model_name_writes_nothing(workspace: Workspace, reg: Registry) -> None:
    with pytest.raises(InputError, match="model name 'bad name' is not valid"):
        register_demo_model(reg, workspace, "bad name")
    assert not workspace.path("models", "bad name").exists()


_KILLED_DEMO = """
import os, signal, sys
from pathlib import Path
import pomlia_hpc.serve.export as export
from pomlia_hpc.registry import Registry
import pomlia_hpc.serve.demo as demo
from pomlia_hpc.workspace import Workspace
home = Path(sys.argv[1])
ws = Workspace(home=home, db_url=f"sqlite:///{home}/registry.db", cluster_profile="local")
def dying(program, path):  # the node dies half-way through the export
    path.write_bytes(b"half an onnx graph")
    os.kill(os.getpid(), signal.SIGKILL)
def registered_then_dying(*args, **kwargs):  # the node dies right after the row's commit
    real_register(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[2] == "export":
    export.export_onnx = dying
else:
    real_register = demo.register_model
    demo.register_model = registered_then_dying
demo.register_demo_model(Registry.open(ws.db_url), ws, "d1")
"""


def _killed_demo(workspace: Workspace, where: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_DEMO, str(workspace.home), where],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr


def test_a_demo_killed_during_its_export_leaves_no_model_and_runs_again(
    workspace: Workspace, reg: Registry
) -> None:
    """`pomlia model demo d1` killed while exporting used to leave model d1 registered but
    not exported: running it again was refused ('d1' is already registered). The model is
    now registered once its bundle is whole, so the re-run finishes the job."""
    _killed_demo(workspace, "export")
    with pytest.raises(NotFoundError):
        resolve_model(reg, "d1")
    bundles = workspace.path("models", "d1", "bundles")
    assert [p.name for p in bundles.iterdir() if not p.name.startswith(".")] == []
    res = register_demo_model(reg, workspace, "d1")
    assert (res.bundle.root / "card.json").is_file()
    assert [p.name for p in bundles.iterdir()] == [res.bundle.root.name]  # temporaries swept
    card = resolve_model(reg, "d1").card
    assert card["export"]["bundle"] == str(res.bundle.root)


def test_a_demo_killed_after_registering_has_its_bundle_recorded(
    workspace: Workspace, reg: Registry
) -> None:
    """The row used to be created first and the bundle recorded in its card by a second
    write: a kill between the two left a model without a bundle whose name the re-run
    refused. The row is now created with the bundle in its card."""
    _killed_demo(workspace, "register")
    card = resolve_model(reg, "d1").card
    assert (Path(card["export"]["bundle"]) / "card.json").is_file()
    assert card["export"]["version"] == Path(card["export"]["bundle"]).name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"channels": 2}, "--channels 2: expected 1 .grey. or 3 .RGB."),
        ({"task_type": "binary", "num_classes": 3}, "--classes 3: a binary task has 2 classes"),
        ({"num_classes": 1}, "--classes 1: a multi-class task has at least 2 classes"),
        ({"task_type": "binary-class", "num_classes": 3}, "a binary task has 2 classes"),
        ({"task_type": "regression"}, "task type 'regression' is not supported"),
        # an overflow building the network (a traceback)
        ({"num_classes": 10**20}, "--classes 100000000000000000000: expected 1 to 500"),
        ({"image_size": 10**20}, "--image-size 100000000000000000000: expected 8 to 4096 px"),
    ],
)
def test_demo_settings_no_served_image_can_meet_are_refused(
    workspace: Workspace, reg: Registry, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        register_demo_model(reg, workspace, "d1", **options)
    assert not workspace.path("models", "d1").exists()


def test_an_unreadable_checkpoint_is_one_line(reg: Registry, tmp_path: Path) -> None:
    """torch's refusal of a file that is not a checkpoint runs to a dozen lines (its
    weights_only advice); `pomlia model register` printed all of them."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage\n")
    with pytest.raises(InputError) as exc:
        register_model(reg, "m1", bad)
    msg = str(exc.value)
    assert msg.startswith(f"{bad}: not a readable classifier checkpoint") and "\n" not in msg
    assert msg.endswith("expected a file written by save_classifier")


@pytest.mark.parametrize("weights", [None, [1, 2], {"head.weight": "not a tensor"}])
def test_a_checkpoint_without_its_weights_is_one_line(tmp_path: Path, weights: object) -> None:
    """A file with the format tag and a valid meta but no weights (cut down by hand or by
    another tool) ended in ``KeyError: 'state_dict'`` or a TypeError from torch (exit 70)."""
    import torch

    from pomlia_hpc.models.checkpoint import FORMAT, load_classifier, write_torch

    meta = dict(SMALL_CNN_META)
    payload = {"format": FORMAT, "meta": meta}
    if weights is not None:
        payload["state_dict"] = weights
    path = write_torch(tmp_path / "cut.pt", payload)
    with pytest.raises(InputError, match=r"cut\.pt: field 'state_dict' should map parameter"):
        load_classifier(path)
    assert torch.load(path, weights_only=True)["format"] == FORMAT


def test_weights_of_another_network_are_one_line(tmp_path: Path) -> None:
    """Weights that do not fit the checkpoint's architecture gave torch's message, one line
    per missing key."""
    import torch

    from pomlia_hpc.models.checkpoint import FORMAT, load_classifier, write_torch
    from pomlia_hpc.models.nets import build_classifier

    meta = dict(SMALL_CNN_META)
    weights = build_classifier("small_cnn", 3, 3).state_dict()  # 3 classes, not 2
    del weights["features.0.weight"]
    weights["extra.bias"] = torch.zeros(1)
    path = write_torch(
        tmp_path / "other.pt", {"format": FORMAT, "meta": meta, "state_dict": weights}
    )
    with pytest.raises(InputError) as exc:
        load_classifier(path)
    assert "\n" not in str(exc.value)
    assert str(exc.value).endswith(
        "(1 missing, e.g. features.0.weight; 1 unexpected, e.g. extra.bias; "
        "2 of another shape, e.g. head.weight)"
    )


def test_register_refuses_a_checkpoint_that_does_not_load_and_copies_nothing(
    workspace: Workspace, tmp_path: Path
) -> None:
    """`model register` read the meta only: a checkpoint of an unknown architecture, or of
    weights that are not its architecture's, was copied and registered, and failed only at
    export or a warm start ("unknown architecture 'nosuch'", naming no file). A text file's
    reason was torch's bare KeyError, "105"."""
    import torch

    from pomlia_hpc.models.checkpoint import FORMAT, write_torch
    from pomlia_hpc.models.nets import build_classifier
    from tests.fixtures.cli import refused

    meta = dict(SMALL_CNN_META)
    weights = build_classifier("small_cnn", 2, 3).state_dict()
    cases = {
        "arch.pt": ({**meta, "arch": "nosuch"}, weights, "arch.pt: unknown architecture 'nosuch'"),
        "weights.pt": (meta, {"x": torch.zeros(2)}, "weights.pt: weights do not match arch"),
    }
    for name, (m, w, said) in cases.items():
        path = write_torch(tmp_path / name, {"format": FORMAT, "meta": m, "state_dict": w})
        err = refused("model", "register", "m", str(path))
        assert said in err, err
    text = tmp_path / "text.pt"
    text.write_text("hi\n")
    err = refused("model", "register", "m", str(text))
    assert "not a readable classifier checkpoint (not a file torch.save wrote" in err, err
    # A NaN std (every output NaN, blamed on the model at export) and a size that overflowed
    # building the network (a traceback at export) are refused by their field.
    nan = {"mean": [0.5] * 3, "std": [float("nan")] * 3}
    for key, value, said in (
        ("preprocessing", nan, "'preprocessing' needs 3 finite means and 3 positive finite"),
        ("image_size", 10**30, "image_size"),
        ("num_classes", 10**30, "num_classes"),
    ):
        path = write_torch(
            tmp_path / f"{key}.pt",
            {"format": FORMAT, "meta": {**meta, key: value}, "state_dict": weights},
        )
        err = refused("model", "register", "m", str(path))
        assert said in err and "Traceback" not in err, err
    err = refused("model", "register", "m", str(tmp_path))  # a folder
    assert f"{tmp_path} is a folder: expected a classifier checkpoint file" in err, err
    assert not workspace.path("models").exists() or not any(workspace.path("models").iterdir())
