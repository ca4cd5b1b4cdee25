"""Which encoder's fingerprints ``recommend`` compares tasks by, and at what cost: each
command hashes the weights file of an encoder it considers (50 MB for a ResNet-18
autoencoder), so only an encoder that could still cover the most tasks is hashed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pomlia_hpc.fingerprint import markers
from pomlia_hpc.registry import Registry
from pomlia_hpc.strategy import fpdist
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import embedded_sets, tiny_task

MEANS = {"blood": [0.0, 0.0], "derm": [3.0, 0.0], "path": [0.0, 4.0], "oct": [6.0, 8.0]}


def test_only_the_weights_of_an_encoder_that_could_win_are_hashed(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every encoder with enough complete sets had its weights file hashed on every
    `recommend`, the one chosen or not; the one covering the most is hashed first, and the
    others only when its current sets no longer cover more (it was retrained)."""
    flags = {"blood": "bloodmnist", "derm": "dermamnist", "path": "pathmnist", "oct": "octmnist"}
    for seed, (task, flag) in enumerate(flags.items()):
        tiny_task(workspace, reg, task, flag, "acc", seed=seed)
    weights = embedded_sets(workspace.home, reg, MEANS)
    few = embedded_sets(workspace.home, reg, {t: MEANS[t] for t in ("blood", "derm")}, "few")
    hashed: list[str] = []

    def spy(path: str | Path) -> str:
        hashed.append(Path(path).name)
        return markers.checkpoint_digest(path)

    monkeypatch.setattr(fpdist, "checkpoint_digest", spy)
    names = list(MEANS)
    got = fpdist.fingerprint_distances(reg, names)
    assert got is not None and got.encoder == "enc" and hashed == [weights.name]
    # `enc` retrained under its name: its complete records hold earlier weights' vectors.
    weights.write_bytes(b"weights of the retrained encoder")
    hashed.clear()
    got = fpdist.fingerprint_distances(reg, names)
    assert got is not None and got.encoder == "few"
    assert hashed == [weights.name, few.name]
    assert got.pairs[0, 1] == pytest.approx(3.0)  # blood to derm, by few's means
