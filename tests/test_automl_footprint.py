"""What a finished study keeps on disk: every trial's model and records, not the epoch
checkpoints its configurations resumed from (most of its folder: 85-128 MiB per ResNet18
configuration besides its 43 MiB model, kept for good on a cluster's quota), and its best
model once, not twice."""

from __future__ import annotations

from pathlib import Path

from pomlia_hpc.automl import records
from pomlia_hpc.automl.engine import EngineOptions, TrainRequest, read_state, train
from pomlia_hpc.automl.space import TrainConfig
from pomlia_hpc.automl.study import run_study
from pomlia_hpc.automl.study.footprint import drop_resume_checkpoints
from pomlia_hpc.data.store import open_version
from pomlia_hpc.files import host_field
from pomlia_hpc.models.catalog import find_model, promote_checkpoint
from pomlia_hpc.models.checkpoint import load_classifier
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import save_demo_checkpoint
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_dataset, tiny_study, tiny_task

OPTS = EngineOptions(threads=1)


def test_a_finished_study_keeps_its_models_and_not_its_resume_checkpoints(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    # A promotion and the final training continue from a configuration's checkpoint: they
    # must still find it while the study runs.
    spec = tiny_study(
        reg,
        workspace,
        "blood",
        "fp",
        n_trials=3,
        max_epochs=2,
        eta=2,
        optimizer="smac",
        final_full_budget=True,
        initial_configs=None,
        executor="debug",
    )
    # A trial killed while writing its model left the cut file under its temporary name.
    stale = workspace.path("runs", "fp", "configs", "0123456789ab")
    stale.mkdir(parents=True)
    cut = stale / f".model-e1.pt.{host_field()}.{2**22 + 1}.tmp"
    cut.write_bytes(b"x" * 1000)
    result = run_study(reg, workspace, spec, poll_s=0.2)
    assert not cut.exists()
    assert result.model_name == "fp-best"
    runs = records.study_runs(reg, "fp")
    ok = [r for r in runs if r.status == "ok"]
    assert len(ok) == len(runs) >= 3
    assert any(r.metrics["start_epoch"] for r in ok), "no trial continued from a checkpoint"
    folder = workspace.path("runs", "fp")
    configs = [p for p in (folder / "configs").iterdir() if p.is_dir() and p != stale]
    assert configs and not [p for p in configs if (p / "ckpt").exists()]
    for config in configs:  # the per-epoch history stays
        assert (config / "state.json").is_file()
    for run in ok:  # every trial's model, which its run names
        assert load_classifier(Path(run.metrics["model_path"])).meta.arch == "small_cnn"
    # The promoted best model is a second name of its run's file, not a second copy of it,
    # and outlives it: a clean-up of the study's folder keeps the registered model.
    model = find_model(reg, "fp-best")
    assert model is not None
    best = next(r for r in ok if r.id == result.best_run_id)
    run_file, model_file = Path(best.metrics["model_path"]), Path(model.path)
    assert model_file != run_file and model_file.stat().st_ino == run_file.stat().st_ino
    run_file.unlink()
    assert load_classifier(model_file).meta.arch == "small_cnn"


def test_a_promotion_after_the_study_finished_trains_from_scratch(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    # A finished study dropped its configurations' checkpoints; a later trial of the same
    # configuration at a larger budget (a resumed study asked for more, its final training)
    # must train the whole budget from scratch: not fail on the missing checkpoint, not count
    # the epochs of the dropped checkpoint as done.
    ref = tiny_dataset(workspace, reg, "blood", sizes=(64, 24, 24))
    store = str(open_version(reg, ref).path)
    cfg = TrainConfig(arch="small_cnn", lr=3e-3, batch_size=32)
    study = tmp_path / "study"
    workdir = study / "configs" / "k"

    def request(epochs: int) -> TrainRequest:
        model = str(workdir / f"model-e{epochs}.pt")
        return TrainRequest(
            store, "multi-class", cfg, epochs, str(workdir), model, "k", options=OPTS
        )

    first = train(request(1))
    assert read_state(workdir) is not None and (workdir / "ckpt").is_dir()
    assert drop_resume_checkpoints(study) > 0
    assert not (workdir / "ckpt").exists()
    assert read_state(workdir) is None  # nothing to resume from: a trial starts at epoch 0
    second = train(request(2))
    assert (second.start_epoch, second.epochs) == (0, 2)
    assert [h["epoch"] for h in second.history] == [1, 2]
    # the same first epoch, trained again
    assert second.history[0]["train_loss"] == first.history[0]["train_loss"]
    assert (workdir / "model-e1.pt").is_file() and (workdir / "model-e2.pt").is_file()
    assert read_state(workdir)["epoch"] == 2


def test_a_registered_file_of_the_user_is_copied_and_a_link_again_leaves_no_temporary(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    # `model register NAME FILE` promises a copy: the user's file may be rewritten in place
    # (torch.save to its path truncates and writes the same file), which must not change
    # the registered model, as it would through a hard link.
    mine = save_demo_checkpoint(tmp_path / "mine.pt", num_classes=3)
    model_file = Path(promote_checkpoint(reg, workspace, "m1", mine).path)
    before = model_file.read_bytes()
    with mine.open("r+b") as fh:
        fh.write(b"\0" * 64)
    assert model_file.read_bytes() == before
    # A link to the file already there (a registration that failed after linking, retried):
    # registered, and no second name left under a temporary name (a rename of a link onto
    # its own file does nothing).
    there = save_demo_checkpoint(workspace.path("models", "m2.pt"), num_classes=3)
    assert promote_checkpoint(reg, workspace, "m2", there, link=True).path == str(there)
    assert sorted(p.name for p in there.parent.iterdir()) == ["m1.pt", "m2.pt"]
