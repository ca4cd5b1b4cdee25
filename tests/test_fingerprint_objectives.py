"""Encoder objectives (mse, style, contrastive), hold-out, early stopping, LR schedule, curves."""

from __future__ import annotations

import itertools
import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from pomlia_hpc.automl.sources import encoder_weights
from pomlia_hpc.cluster import Executor
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.errors import InputError
from pomlia_hpc.fingerprint.augment import acquisition_view
from pomlia_hpc.fingerprint.autoencoder import Autoencoder, EncoderConfig, to_input
from pomlia_hpc.fingerprint.extract import finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.loader import Source
from pomlia_hpc.fingerprint.objectives import (
    OBJECTIVES,
    build_objective,
    gram,
    nt_xent,
    objective_of,
    supervised_contrastive,
)
from pomlia_hpc.fingerprint.shards import read_embeddings, run_shard
from pomlia_hpc.fingerprint.train import (
    TrainConfig,
    encoder_dir,
    load_encoder,
    normalise_config,
    train_encoder,
)
from pomlia_hpc.fingerprint.validation import curves_figure, lr_at, split_holdout
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset


def _batch(n: int = 8) -> dict[str, torch.Tensor]:
    x8 = np.concatenate([make_split("pathmnist", n // 2)[0], make_split("dermamnist", n // 2)[0]])
    rng = np.random.default_rng(0)
    views = [to_input(acquisition_view(x8, rng), 28) for _ in range(2)]
    return {
        "x": to_input(x8, 28),
        "source": torch.tensor([0] * (n // 2) + [1] * (n // 2)),
        "views": torch.stack(views),
    }


def test_contrastive_terms_prefer_matching_pairs() -> None:
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    assert nt_xent(a, a + 0.01 * torch.randn(16, 8)) < nt_xent(a, torch.randn(16, 8))
    labels = torch.tensor([0] * 8 + [1] * 8)
    grouped = torch.cat([torch.ones(8, 8), -torch.ones(8, 8)]) + 0.05 * torch.randn(16, 8)
    mixed = torch.randn(16, 8)
    assert supervised_contrastive(grouped, grouped, labels) < supervised_contrastive(
        mixed, mixed, labels
    )
    assert float(supervised_contrastive(a, a, torch.arange(16))) >= 0.0  # only the other view
    f = torch.randn(2, 4, 3, 3)
    g = gram(f)
    assert g.shape == (2, 4, 4) and torch.allclose(g, g.transpose(1, 2))


@pytest.mark.parametrize("name", OBJECTIVES)
def test_each_objective_trains_the_encoder(name: str) -> None:
    torch.manual_seed(0)
    obj = build_objective(name, Autoencoder(EncoderConfig(latent_dim=4)))
    batch = _batch()
    opt = torch.optim.Adam(obj.parameters(), lr=1e-3)
    before = obj.model.encoder.conv1.weight.detach().clone()
    first = obj(batch)
    assert first.ndim == 0 and torch.isfinite(first)
    assert "mse" in obj.parts
    opt.zero_grad()
    first.backward()
    opt.step()
    assert not torch.equal(before, obj.model.encoder.conv1.weight)


def test_contrastive_needs_views_and_unknown_objective() -> None:
    obj = build_objective("contrastive", Autoencoder(EncoderConfig(latent_dim=4)))
    with pytest.raises(InputError, match="needs batches with 'x', 'source' and 'views'"):
        obj(torch.zeros(2, 3, 28, 28))
    with pytest.raises(InputError, match="objective 'simclr' is not known"):
        build_objective("simclr", obj.model)


def test_holdout_schedule_and_legacy_configs() -> None:
    train, val = split_holdout([Source("a", 0, 100), Source("b", 10, 12), Source("c", 0, 1)], 0.1)
    assert train == [Source("a", 0, 90), Source("b", 10, 11), Source("c", 0, 1)]
    assert val == [Source("a", 90, 100), Source("b", 11, 12)]
    assert split_holdout([Source("a", 0, 100)], 0.0) == ([Source("a", 0, 100)], [])
    lrs = [lr_at(e, 5, 1e-3, "cosine") for e in range(5)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(5e-5)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lr_at(3, 5, 1e-3, "constant") == 1e-3
    # An encoder trained before objectives existed reads as mse, without hold-out.
    old = TrainConfig().model_dump(mode="json")
    for key in ("objective", "holdout", "lr_schedule", "patience"):
        old.pop(key)
    assert objective_of(old) == "mse"
    norm = normalise_config(old)
    assert (norm["objective"], norm["holdout"], norm["lr_schedule"]) == ("mse", 0.0, "constant")


@pytest.mark.usefixtures("restore_torch_threads")
def test_contrastive_training_with_holdout_and_early_stop(
    workspace: Workspace, reg: Registry
) -> None:
    a = make_dataset(workspace, reg, "blood", sizes=(40, 4, 4), chunk_rows=16)
    b = make_dataset(workspace, reg, "organ", "organamnist", (40, 4, 4), chunk_rows=16)
    cfg = TrainConfig.model_validate(
        {
            "encoder": {"latent_dim": 4},
            "epochs": 3,
            "batch_size": 16,
            "num_workers": 0,
            "objective": "contrastive",
            "holdout": 0.2,
            "patience": 1,
            "lr": 1e-2,
        }
    )
    ex = Executor.from_profile("debug", workspace.jobs, reg)  # the training in this process
    enc = train_encoder(reg, workspace, "con", [a, b], cfg, executor=ex)
    assert enc.config["objective"] == "contrastive"
    out = encoder_dir(workspace, "con")
    curves = json.loads((out / "loss_curves.json").read_text())
    assert (out / "loss_curves.png").stat().st_size > 1000
    # the figure's title names the encoder, its objective and data sets (it had none)
    assert curves["encoder"] == "con" and curves["datasets"] == [a, b]
    fig = curves_figure(curves)
    try:
        assert (
            fig.axes[0].get_title()
            == "encoder con, objective contrastive\n2 data sets: blood, organ"
        )
    finally:
        plt.close(fig)
    n = len(curves["train"])
    assert 2 <= n <= 3 and len(curves["val"]) == n and len(curves["lr"]) == n
    assert curves["lr"][0] == pytest.approx(1e-2) and curves["lr"][1] < 1e-2
    assert set(curves["parts"][0]) == {"nt_xent", "membership", "mse"}
    best = curves["best_epoch"]
    assert curves["val"][best - 1] == min(curves["val"])
    assert curves["stopped_early"] == (n < 3)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(e["images"] == 64 for e in log)  # (32 + 32 train rows) // 16 * 16, 8 held out
    model, _cfg = load_encoder(reg, "con")  # a plain encoder checkpoint (no projection head)
    assert not any(k.startswith("head") for k in model.state_dict())
    # AutoML's encoder initialisation takes it like any other encoder.
    src = encoder_weights(reg, "con", 1, workspace.path("tmp", "con.pt"))
    assert src.arch == "resnet18_imagenet" and "conv1.weight" in torch.load(src.path)
    # Extraction with it stays bitwise idempotent: a forced re-extraction (other shard cut)
    # gives the same bits.
    bits = []
    for shards, force in ((1, False), (2, True)):
        plan = plan_extraction(
            reg, workspace, "con", [a], shards=shards, threads=1, batch_size=8, force=force
        )
        for spec in plan.specs:
            run_shard(spec)
        (res,) = finish_extraction(reg, plan)
        assert res.status == "complete"
        z = read_embeddings(plan.specs[0].out_path)
        bits.append(np.ascontiguousarray(z, dtype=np.float32).view(np.uint32).copy())
    assert bits[0].shape == (48, 4)
    np.testing.assert_array_equal(bits[0], bits[1])
    # The same name with another objective is another training: refused.
    with pytest.raises(InputError, match=r"trained with objective contrastive but this run asks"):
        train_encoder(reg, workspace, "con", [a, b], cfg.model_copy(update={"objective": "mse"}))
