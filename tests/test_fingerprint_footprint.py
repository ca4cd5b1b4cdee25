"""What a finished encoder training leaves on disk: its weights, records and curves, not the
resume state. A one-epoch ResNet18 encoder left 223 MiB (a 134 MiB DeepSpeed checkpoint with
Adam's moments, ``best.pt`` and ``encoder.pt`` of 45 MiB each), two epochs 357 MiB, on a
cluster's disk quota; the resume state is removed once the encoder is registered."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from pomlia_hpc.files import host_field
from pomlia_hpc.fingerprint.train import (
    TrainConfig,
    encoder_dir,
    get_encoder,
    load_encoder,
    train_encoder,
)
from pomlia_hpc.registry import Encoder, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset

# Two epochs with a held-out share: two epoch checkpoints and best.pt exist while it trains.
CFG = TrainConfig.model_validate(
    {
        "encoder": {"latent_dim": 2},
        "epochs": 2,
        "batch_size": 16,
        "num_workers": 0,
        "max_images_per_dataset": 48,
        "holdout": 0.25,
    }
)


#: A process id above Linux's largest (2**22): no process of this host has it.
DEAD_PID = 2**22 + 1


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_registered_encoder_keeps_its_weights_and_not_its_resume_state(
    workspace: Workspace, reg: Registry
) -> None:
    workspace = replace(workspace, cluster_profile="debug")  # the job in this process
    a = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4), chunk_rows=16)
    enc = train_encoder(reg, workspace, "ae", [a], CFG)
    out = encoder_dir(workspace, "ae")
    weights = out / "encoder.pt"
    assert enc.checkpoint_path == str(weights) and len(enc.loss_curve) == 2
    assert not (out / "checkpoints").exists() and not (out / "best.pt").exists()
    # The records and curves stay: only the weights are big.
    for kept in ("config.json", "latest.json", "train_log.jsonl", "loss_curves.json"):
        assert (out / kept).is_file(), kept
    assert _folder_bytes(out) < 1.1 * weights.stat().st_size
    model, cfg = load_encoder(reg, "ae")
    assert cfg.latent_dim == 2 and not model.training
    before, inode = _digest(weights), weights.stat().st_ino

    # The registration lost (a crash after the job): the same command runs the job again,
    # which finds the training finished without its checkpoints and registers the same weights.
    with reg.session() as s:
        s.query(Encoder).filter(Encoder.name == "ae").delete()
    again = train_encoder(reg, workspace, "ae", [a], CFG)
    assert again.checkpoint_path == str(weights) and again.loss_curve == enc.loss_curve
    # not trained again from scratch (the same weights, deterministic, yet a new file)
    assert _digest(weights) == before and weights.stat().st_ino == inode
    assert get_encoder(reg, "ae").id == again.id


def test_the_same_training_again_removes_resume_state_an_older_release_kept(
    workspace: Workspace, reg: Registry
) -> None:
    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4), chunk_rows=16)
    enc = train_encoder(reg, workspace, "ae", [a], CFG)
    out = encoder_dir(workspace, "ae")
    (out / "checkpoints" / "epoch-0002").mkdir(parents=True)
    (out / "checkpoints" / "epoch-0002" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 1000)
    (out / "best.pt").write_bytes((out / "encoder.pt").read_bytes())
    # a cut best.pt of an attempt killed while writing it (a process of this host, gone)
    cut = out / f".best.pt.{host_field()}.{DEAD_PID}.tmp"
    cut.write_bytes(b"x" * 1000)
    assert train_encoder(reg, workspace, "ae", [a], CFG).id == enc.id  # nothing trains
    assert not (out / "checkpoints").exists() and not (out / "best.pt").exists()
    assert not cut.exists()
    assert (out / "encoder.pt").is_file()
