"""The loop's retraining study offers the champion's own initial weights: a champion trained
from a fingerprint encoder (``init=encoder``) names it in its lineage, and the study gets it,
so the champion's configuration fits the study's space instead of being left out."""

from __future__ import annotations

from pomlia_hpc.loop.stages import champion_encoder
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_encoder


def test_the_champions_encoder_is_offered_while_it_is_registered(
    workspace: Workspace, reg: Registry
) -> None:
    enc = make_encoder(workspace, reg, "enc")
    assert champion_encoder(reg, Model(lineage={"encoder_id": enc.id})) == str(enc.id)
    assert champion_encoder(reg, Model(lineage={"encoder_id": enc.id + 99})) is None  # gone
    assert champion_encoder(reg, Model(lineage={"run_id": 1})) is None  # trained without one
    assert champion_encoder(reg, Model(lineage=None)) is None
