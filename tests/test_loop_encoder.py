"""The loop's retraining study offers the champion's own initial weights: a champion trained
from a fingerprint encoder (``init=encoder``) names it in its lineage, and the study gets it,
so the champion's configuration fits the study's space instead of being left out."""

from __future__ import annotations

from typing import Any

from pomlia_hpc.automl.space import SpaceOptions, build_space
from pomlia_hpc.loop.driver import LoopContext
from pomlia_hpc.loop.stages import champion_encoder, fingerprints_stage
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import donor_model, make_dataset, make_encoder

PROBE = {"arch": "resnet18_imagenet", "init": "encoder", "mode": "linear_probe"}


def _champion(encoder_id: int | None, config: dict[str, Any] | None) -> Model:
    lineage: dict[str, Any] = {"run_id": 1}
    if encoder_id is not None:
        lineage["encoder_id"] = encoder_id
    if config is not None:
        lineage["config"] = config
    return Model(lineage=lineage)


def test_the_champions_encoder_is_offered_while_it_is_registered(
    workspace: Workspace, reg: Registry
) -> None:
    enc = make_encoder(workspace, reg, "enc")
    assert champion_encoder(reg, _champion(enc.id, PROBE)) == str(enc.id)
    assert champion_encoder(reg, _champion(enc.id + 99, PROBE)) is None  # gone
    assert champion_encoder(reg, _champion(None, {"arch": "small_cnn"})) is None  # without one
    assert champion_encoder(reg, Model(lineage=None)) is None


def test_an_encoder_that_only_found_extra_images_is_not_offered(
    workspace: Workspace, reg: Registry
) -> None:
    """A small CNN trained from scratch on extra nearest images names the encoder that found
    them; offering that encoder would add its architecture to a study the loop keeps to the
    champion's (the space holds every weight source's architecture)."""
    enc = make_encoder(workspace, reg, "enc")
    nearest = {"arch": "small_cnn", "init": "scratch", "extra_data": "nearest", "extra_n": 300}
    assert champion_encoder(reg, _champion(enc.id, nearest)) is None
    # What it would have done: the loop's small-CNN study would also train ResNet-18s.
    widened = build_space(SpaceOptions(archs=("small_cnn",), encoder_arch="resnet18_imagenet"))
    assert "resnet18_imagenet" in widened["arch"].choices


def test_an_encoder_outside_the_loops_architectures_is_not_offered(
    workspace: Workspace, reg: Registry
) -> None:
    enc = make_encoder(workspace, reg, "enc")
    assert champion_encoder(reg, _champion(enc.id, PROBE), ("small_cnn",)) is None
    assert champion_encoder(reg, _champion(enc.id, PROBE), ("resnet18_imagenet",)) == str(enc.id)


def test_fingerprint_stage_embeds_the_new_version_and_indexes_it(
    workspace: Workspace, reg: Registry
) -> None:
    """The loop's fingerprint stage with a real (untrained) encoder: the harvested version's
    images are embedded and added to the encoder's index (the demo's loop runs this stage)."""
    enc = make_encoder(workspace, reg, "enc")
    ref = make_dataset(workspace, reg, "blood", sizes=(24, 4, 8))
    donor_model(workspace, reg)  # a classifier checkpoint at models/donor.pt
    path = workspace.path("models", "donor.pt")
    champ = register_model(reg, "champ", path, lineage={"encoder_id": enc.id})
    ctx = LoopContext(
        registry=reg,
        workspace=workspace,
        run_id=1,
        slot="champ",
        params={"champion_id": champ.id},
        outputs={"ingest": {"ref": ref}},
        progress=lambda *_: None,
    )
    out = fingerprints_stage(ctx)
    assert out["encoder_id"] == enc.id
    assert out["n_vectors"] == out["index_vectors"] == 24 + 4 + 8
