"""The autoencoder, its input conversion, the Zarr batch stream, and training as a job with
DeepSpeed: registration, resuming from the last epoch checkpoint, two data-parallel ranks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pomlia_hpc.cluster import Executor, JobFailedError
from pomlia_hpc.curves import CURVES_DIR, read_curves
from pomlia_hpc.data.store import open_version
from pomlia_hpc.errors import DataIntegrityError, InputError, NotFoundError
from pomlia_hpc.fingerprint import trainjob
from pomlia_hpc.fingerprint.autoencoder import (
    Autoencoder,
    EncoderConfig,
    backbone_state_dict,
    to_input,
)
from pomlia_hpc.fingerprint.loader import Source, StoreStream
from pomlia_hpc.fingerprint.shards import embed_images
from pomlia_hpc.fingerprint.train import (
    TrainConfig,
    TrainJob,
    encoder_dir,
    load_encoder,
    train_encoder,
)
from pomlia_hpc.fingerprint.trainjob import refuse_divergence
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, tiny_dataset

# Jobs run in this process (debug executor) set torch's thread count: put back after.
pytestmark = pytest.mark.usefixtures("restore_torch_threads")


@pytest.mark.parametrize(("size", "d"), [(28, 2), (64, 16)])
def test_autoencoder_shapes(size: int, d: int) -> None:
    model = Autoencoder(EncoderConfig(latent_dim=d, image_size=size)).eval()
    x = torch.rand(3, 3, size, size)
    with torch.no_grad():
        assert model.encode(x).shape == (3, d)
        y = model(x)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    convt = [m for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convt) == 5  # the paper's decoder
    assert model.encoder.fc.in_features == 512 and model.encoder.fc.out_features == d


def test_an_encoder_of_nan_weights_embeds_nothing() -> None:
    """A diverged training's weights give NaN vectors: refused where they are made, not by the
    distances, plots and index that read them (all of which failed, exit 70)."""
    model = Autoencoder(EncoderConfig(latent_dim=2, image_size=28)).eval()
    images = np.zeros((3, 28, 28, 1), np.uint8)
    assert np.isfinite(embed_images(model, images, 2, torch.device("cpu"))).all()
    with torch.no_grad():
        model.encoder.fc.weight.fill_(float("nan"))
    with pytest.raises(
        InputError,
        match=r"non-finite latent vectors \(NaN or inf\) for images "
        r"\[0, 2\).*diverged.*\n  hint: train the encoder again with a lower --lr",
    ):
        embed_images(model, images, 2, torch.device("cpu"))


@pytest.mark.parametrize(
    ("loss", "val", "said"),
    [
        (math.nan, 0.5, "loss nan"),
        (0.5, math.inf, "held-out loss inf"),
        (math.inf, None, "loss inf"),
    ],
)
def test_a_diverged_epoch_stops_the_training(loss: float, val: float | None, said: str) -> None:
    refuse_divergence(0, 0.5, 0.4, 1e-3)  # finite: goes on
    refuse_divergence(0, 0.5, None, 1e-3)  # no held-out rows
    with pytest.raises(
        InputError,
        match=rf"diverged in epoch 3: {said} at learning rate 10; .*nothing is registered",
    ):
        refuse_divergence(2, loss, val, 10.0)


def test_to_input_gray_rgb_and_resize() -> None:
    gray = np.full((2, 28, 28, 1), 255, np.uint8)
    x = to_input(gray, 28)
    assert x.shape == (2, 3, 28, 28) and float(x.min()) == 1.0
    rgb = np.zeros((1, 64, 64, 3), np.uint8)
    rgb[..., 0] = 255
    y = to_input(rgb, 28)  # resized to the encoder's input size
    assert y.shape == (1, 3, 28, 28)
    assert torch.allclose(y[0, 0], torch.ones(28, 28)) and float(y[0, 1:].abs().max()) == 0.0
    with pytest.raises(InputError, match=r"expected \(N, H, W, C\) with C = 1 or 3"):
        to_input(np.zeros((1, 28, 28, 2), np.uint8), 28)
    with pytest.raises(ValueError, match="image_size"):
        EncoderConfig(image_size=32)  # type: ignore[arg-type]


def test_backbone_weights_initialise_a_classifier() -> None:
    model = Autoencoder(EncoderConfig(latent_dim=8)).eval()
    clf = build_classifier("resnet18_imagenet", num_classes=5, in_channels=1).eval()
    missing, unexpected = clf.load_state_dict(backbone_state_dict(model, 1), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    # A gray image through the classifier's trunk = the encoder's trunk on it repeated to RGB.
    gray = torch.rand(2, 1, 28, 28)
    trunk = torch.nn.Sequential(*list(clf.children())[:-1])
    enc_trunk = torch.nn.Sequential(*list(model.encoder.children())[:-1])
    with torch.no_grad():
        torch.testing.assert_close(trunk(gray), enc_trunk(gray.expand(-1, 3, -1, -1)))
    small = Autoencoder(EncoderConfig(latent_dim=8, stem="small"))
    clf_small = build_classifier("resnet18", num_classes=5, in_channels=3, image_size=28)
    clf_small.load_state_dict(backbone_state_dict(small), strict=False)


def test_stream_gives_every_rank_equal_batches_of_disjoint_rows(
    workspace: Workspace, reg: Registry
) -> None:
    a = make_dataset(workspace, reg, "blood", sizes=(70, 5, 5), chunk_rows=16)
    b = make_dataset(workspace, reg, "breast", "breastmnist", (45, 5, 5), chunk_rows=8)
    sources = []
    for ref in (a, b):
        store = open_version(reg, ref)
        lo, hi = store.split_range("train")
        sources.append(Source(str(store.path), lo, hi))
    seen = []
    lengths = []
    for rank in range(2):
        stream = StoreStream(sources, batch_size=8, image_size=28, epoch=3, rank=rank, world=2)
        batches = list(stream)
        lengths.append(len(batches))
        assert all(x.shape == (8, 3, 28, 28) for x in batches)
        seen.extend(batches)
    assert (
        lengths
        == [7, 7]
        == [StoreStream(sources, batch_size=8, image_size=28, epoch=0, world=2).steps] * 2
    )  # 115 // 16
    # No image twice: compare raw bytes of all streamed images.
    keys = {x.numpy().tobytes() for batch in seen for x in batch}
    assert len(keys) == 7 * 2 * 8
    # Different epochs shuffle differently; the same epoch repeats exactly.
    e3 = next(iter(StoreStream(sources, batch_size=8, image_size=28, epoch=3, world=2)))
    e4 = next(iter(StoreStream(sources, batch_size=8, image_size=28, epoch=4, world=2)))
    assert torch.equal(e3, seen[0]) and not torch.equal(e3, e4)


def _cfg(**over: object) -> TrainConfig:
    base: dict[str, object] = {
        "encoder": {"latent_dim": 2},
        "epochs": 1,
        "batch_size": 16,
        "num_workers": 1,
        "max_images_per_dataset": 48,
        "objective": "mse",
        "holdout": 0.0,
    }
    return TrainConfig.model_validate(base | over)


def _small(**over: object) -> TrainConfig:
    """:func:`_cfg` with steps of 8 images and 16 images a data set: four steps an epoch on two
    data sets (each step of 16 images cost about a second of CPU more)."""
    return _cfg(**({"batch_size": 8, "max_images_per_dataset": 16} | over))


def test_train_register_and_resume(workspace: Workspace, reg: Registry, tmp_path: Path) -> None:
    a = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4), chunk_rows=16)
    b = make_dataset(workspace, reg, "organ", "organamnist", (48, 4, 4), chunk_rows=16)
    ex = Executor.from_profile("local", workspace.jobs, reg)
    seen: list[tuple[int, int]] = []
    enc = train_encoder(
        reg,
        workspace,
        "ae",
        [a, b],
        _small(),
        executor=ex,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1] == (1, 1)
    assert len(enc.loss_curve) == 1 and enc.loss_curve[0] > 0
    assert enc.config["encoder"]["latent_dim"] == 2 and len(enc.dataset_version_ids) == 2
    with reg.session() as s:
        job = s.get(Job, enc.job_id)
        assert job is not None and job.state == "COMPLETED"
    model, cfg = load_encoder(reg, "ae")
    assert cfg.latent_dim == 2 and not model.training
    out = encoder_dir(workspace, "ae")
    assert json.loads((out / "latest.json").read_text())["epoch"] == 1
    # Training curves beside the checkpoints, for TensorBoard.
    curves = read_curves(out / CURVES_DIR)
    assert [s for s, _ in curves["train/loss"]] == [1] and curves["train/loss"][0][1] > 0
    assert curves["train/lr"] == [(1, pytest.approx(_small().lr))]
    # Same name again: already trained, nothing runs.
    assert train_encoder(reg, workspace, "ae", [a, b], _small(), executor=ex).id == enc.id
    # Same name, other options or datasets: refused, naming the field (nothing runs).
    with pytest.raises(
        InputError, match=r"encoder 'ae' was trained with epochs 1 but this run asks for 2"
    ):
        train_encoder(reg, workspace, "ae", [a, b], _small(epochs=2), executor=ex)
    with pytest.raises(InputError, match=rf"datasets {a}, {b} but this run asks for {a}:"):
        train_encoder(reg, workspace, "ae", [a], _small(), executor=ex)

    # A longer run in the same folder resumes after the epoch-1 checkpoint (what a requeued
    # job does after preemption) and keeps the first epoch's loss. The registered encoder's
    # folder no longer has checkpoints (removed once registered), so the job trains epoch 1
    # into a folder of its own first, as a job that was then preempted would have.
    # A kill after an epoch's log line but before its checkpoint leaves a line that no
    # checkpoint backs (here epoch 2, and a line cut short): the resume drops them, then logs
    # epoch 2 once.
    # These two jobs run in this process (debug executor): the resume is under test here, and
    # the training above already ran as a job process of its own.
    sources = [Source(str(open_version(reg, r).path), 0, 16) for r in (a, b)]
    job_out = tmp_path / "preempted"
    here = Executor.from_profile("debug", workspace.jobs, reg)
    first = here.submit(TrainJob(_small(), sources, str(job_out))).result()
    with (job_out / "train_log.jsonl").open("a") as fh:
        fh.write(json.dumps({"epoch": 2, "images": -1}) + "\n" + '{"epoch": 3, "ima')
    res = here.submit(TrainJob(_small(epochs=2), sources, str(job_out))).result()
    assert res["resumed_from"] == 1
    assert len(res["loss_curve"]) == 2 and res["loss_curve"][0] == first["loss_curve"][0]
    log = [json.loads(line) for line in (job_out / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and all(e["images"] == 32 for e in log)

    # Unfinished (no encoder.pt, as after a killed job): resuming under other options would
    # mix two trainings in one checkpoint, so it is refused too.
    (out / "encoder.pt").unlink()
    with pytest.raises(InputError, match=r"encoder 'ae' was started with learning rate 0.001 "):
        train_encoder(reg, workspace, "ae", [a, b], _small(lr=0.01), executor=ex)
    with pytest.raises(InputError, match=r"latent size 2 but this run asks for 3"):
        train_encoder(reg, workspace, "ae", [a, b], _small(encoder={"latent_dim": 3}), executor=ex)


def test_a_start_that_failed_before_an_epoch_does_not_pin_its_datasets(
    workspace: Workspace, reg: Registry
) -> None:
    """A training stopped before its first checkpoint (here by a damaged chunk) left its
    config.json, and every later start under that name with other datasets was refused;
    nothing removed it. It pins nothing now: a new start replaces it."""
    bad = tiny_dataset(workspace, reg, "bad", sizes=(48, 4, 4))
    good = make_dataset(workspace, reg, "blood", sizes=(48, 4, 4), chunk_rows=16)
    chunk = next(
        p for p in (open_version(reg, bad).path / "images" / "c").rglob("*") if p.is_file()
    )
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01  # Blosc decodes it; its hash no longer matches
    chunk.write_bytes(bytes(data))
    ex = Executor.from_profile("debug", workspace.jobs, reg)  # the trainings in this process
    with pytest.raises(DataIntegrityError):
        train_encoder(reg, workspace, "e1", [bad], _small(num_workers=0), executor=ex)
    out = encoder_dir(workspace, "e1")
    assert (out / "config.json").is_file() and not (out / "latest.json").exists()
    enc = train_encoder(reg, workspace, "e1", [good], _small(num_workers=0), executor=ex)
    assert len(enc.loss_curve) == 1 and len(enc.dataset_version_ids) == 1
    assert json.loads((out / "config.json").read_text())["datasets"] == [good]


def test_a_training_that_diverges_registers_nothing(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs in the epoch loop: a held-out loss that came out NaN (a diverged
    training, forced here) fails the job before its checkpoint, and no encoder is registered."""
    a = make_dataset(workspace, reg, "blood", sizes=(16, 2, 2), chunk_rows=16)
    ex = Executor.from_profile("debug", workspace.jobs, reg)  # in this process: the patch holds
    monkeypatch.setattr(trainjob, "validation_loss", lambda *_a, **_k: math.nan)
    # The job fails with the refusal's message (a job's error reaches the command as its
    # failure, as every error raised inside a training job does).
    with pytest.raises(JobFailedError, match=r"diverged in epoch 1: held-out loss nan at learn"):
        train_encoder(reg, workspace, "ae", [a], _small(num_workers=0, holdout=0.1), executor=ex)
    with pytest.raises(NotFoundError, match="encoder 'ae' not found"):
        load_encoder(reg, "ae")


def test_two_data_parallel_ranks_bf16_zero1(workspace: Workspace, reg: Registry) -> None:
    a = make_dataset(workspace, reg, "blood", sizes=(32, 4, 4), chunk_rows=16)
    # The job runs in this process (debug executor) and spawns its two ranks, processes of
    # their own as in a job: the ranks are under test here, and a job process of its own
    # (another start with torch and DeepSpeed) is tested in test_train_register_and_resume.
    ex = Executor.from_profile("debug", workspace.jobs, reg)
    # bf16 convolutions are ~35x slower than fp32 on CPUs without AVX512-BF16: one small step.
    cfg = _cfg(
        processes=2,
        num_workers=0,
        batch_size=8,
        max_images_per_dataset=16,
        precision="bf16",
        zero_stage=1,
    )
    enc = train_encoder(reg, workspace, "ae2", [a], cfg, executor=ex)
    log = (encoder_dir(workspace, "ae2") / "train_log.jsonl").read_text().splitlines()
    assert json.loads(log[0])["images"] == 16  # 2 ranks x 1 step x 8, all-reduced
    model, _ = load_encoder(reg, "ae2")  # exported as fp32
    assert {p.dtype for p in model.state_dict().values() if p.is_floating_point()} == {
        torch.float32
    }
    assert Path(enc.checkpoint_path).is_file()


def test_bad_training_inputs(workspace: Workspace, reg: Registry) -> None:
    a = make_dataset(workspace, reg, "blood", sizes=(8, 2, 2))
    with pytest.raises(NotFoundError, match="dataset 'nope' not found; known:"):
        train_encoder(reg, workspace, "ae", ["nope"], _cfg())
    with pytest.raises(InputError, match="no datasets given"):
        train_encoder(reg, workspace, "ae", [], _cfg())
    with pytest.raises(InputError, match="encoder name 'bad name' is not valid"):
        train_encoder(reg, workspace, "bad name", [a], _cfg())
    # The option to lower is named as the CLI spells it (it said "batch_size").
    with pytest.raises(
        InputError,
        match=r"8 images, fewer than one batch of 16 per process \(1 processes\): expected at "
        r"least 16; lower --batch-size \(or --processes\)$",
    ):
        train_encoder(reg, workspace, "ae", [a], _cfg())
    # The rows held out for early stopping are named (a 2-image data set said "1 images")
    with pytest.raises(
        InputError,
        match=r"training set has 7 images \(1 more held out for early stopping: --holdout\), "
        r"fewer than one batch of 16 .* lower --batch-size \(or --processes, --holdout\)$",
    ):
        train_encoder(reg, workspace, "ae", [a], _cfg(holdout=0.1))
    with pytest.raises(NotFoundError, match="encoder 'ae' not found; known:"):
        load_encoder(reg, "ae")
