"""Who may retrain an encoder, and a retrain's weights and record: an encoder a pipeline trained
before training records named their pipeline, and a crash between the swap and the
registration of a retrain."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.cluster import Executor
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.fingerprint import train as train_module
from pomlia_hpc.fingerprint.train import TrainConfig, encoder_dir, get_encoder, train_encoder
from pomlia_hpc.pipeline.spec import parse_pipeline
from pomlia_hpc.pipeline.stage import StageContext, run_stage
from pomlia_hpc.pipeline.stages import STAGES
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, tiny_encoder_config

# Jobs run in this process (debug executor) set torch's thread count: put back after.
pytestmark = pytest.mark.usefixtures("restore_torch_threads")

SECTION: dict[str, Any] = {
    "name": "ae",
    "latent_dim": 2,
    "epochs": 1,
    "batch_size": 16,
    "max_images": 32,
    "objective": "mse",
}


def _ctx(workspace: Workspace, reg: Registry, ref: str, epochs: int) -> StageContext:
    data = {
        "name": "p",
        "datasets": [{"name": "blood", "medmnist": "bloodmnist"}],
        "encoder": SECTION | {"epochs": epochs},
    }
    ctx = StageContext(parse_pipeline(data, "p.yaml", Path("/data")), workspace, reg)
    record = {"stage": "data", "status": "done", "outputs": {"versions": {"blood": ref}}}
    write_json_atomic(ctx.record_path("data"), record)
    return ctx


def _forget_owner(workspace: Workspace) -> None:
    """The training record as written before records named their pipeline."""
    path = encoder_dir(workspace, "ae") / "config.json"
    record = json.loads(path.read_text())
    del record["pipeline"]
    path.write_text(json.dumps(record))


def test_a_pipeline_retrains_an_encoder_its_stage_trained_before_records_named_it(
    workspace: Workspace, reg: Registry
) -> None:
    """Such an encoder's record has no `pipeline` key: editing the `encoder` section was
    refused as "trained by 'fingerprint train'". The stage's own last record names it."""
    workspace = replace(workspace, cluster_profile="debug")  # the trainings in this process
    ref = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4))
    (encoder,) = [s for s in STAGES if s.name == "encoder"]
    assert run_stage(_ctx(workspace, reg, ref, 1), encoder) == "done"
    _forget_owner(workspace)
    assert run_stage(_ctx(workspace, reg, ref, 2), encoder) == "done"
    assert get_encoder(reg, "ae").config["epochs"] == 2
    # Whoever made it is unknown to another pipeline's section: not 'fingerprint train'.
    _forget_owner(workspace)
    with pytest.raises(InputError) as exc:
        train_encoder(reg, workspace, "ae", [ref], _config(3), pipeline="q")
    assert str(exc.value).startswith(
        "encoder 'ae' was trained outside pipeline 'q' with epochs 2 but pipeline 'q' asks for 3"
    )


def _config(epochs: int) -> TrainConfig:
    return tiny_encoder_config(epochs)


def test_a_crash_before_a_retrain_is_registered_does_not_pass_its_weights_as_the_old(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the swap (new weights in place) and the registration the row still named the
    old settings: `fingerprint train -n ae` with them returned the new weights as "the same".
    The folder's own record is what is compared; the retrain's settings then finish it."""
    ref = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4))
    ex = Executor.from_profile("debug", workspace.jobs, reg)  # the trainings in this process
    train_encoder(reg, workspace, "ae", [ref], _config(1), executor=ex, pipeline="p")

    def crash(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt  # the process ends after the swap, before the registration

    with monkeypatch.context() as m:
        m.setattr(train_module, "register_encoder", crash)
        with pytest.raises(KeyboardInterrupt):
            train_encoder(reg, workspace, "ae", [ref], _config(2), executor=ex, pipeline="p")
    assert get_encoder(reg, "ae").config["epochs"] == 1  # the row is behind the weights
    with pytest.raises(InputError, match="was trained with epochs 2 but this run asks for 1"):
        train_encoder(reg, workspace, "ae", [ref], _config(1), executor=ex)
    enc = train_encoder(reg, workspace, "ae", [ref], _config(2), executor=ex)
    assert enc.config["epochs"] == 2 and len(enc.loss_curve) == 2
