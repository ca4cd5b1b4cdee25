"""The AutoML training engine (DeepSpeed on CPU, in this process), its metrics and its space."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import f1_score

from pomlia_hpc.automl.engine import (
    EngineOptions,
    TrainRequest,
    rank_share,
    read_state,
    train,
)
from pomlia_hpc.automl.metrics import evaluate, medmnist_task, objective_cost
from pomlia_hpc.automl.sources import encoder_weights
from pomlia_hpc.automl.space import (
    SpaceOptions,
    TrainConfig,
    build_space,
    load_initial_configs,
    split_fitting,
)
from pomlia_hpc.data.store import open_version
from pomlia_hpc.errors import InputError
from pomlia_hpc.models.checkpoint import load_classifier
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_dataset

OPTS = EngineOptions(threads=1)


def _request(
    store: str,
    tmp: Path,
    cfg: TrainConfig,
    epochs: int,
    task_type: str = "multi-class",
    **kw: object,
) -> TrainRequest:
    return TrainRequest(
        store,
        task_type,
        cfg,
        epochs,
        str(tmp / "work"),
        str(tmp / f"model-e{epochs}.pt"),
        "k",
        options=kw.pop("options", OPTS),
        **kw,
    )  # type: ignore[arg-type]


def _body(state: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(head) and v.is_floating_point()}


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    "task_type,n_classes", [("multi-class", 5), ("binary", 2), ("ordinal", 4), ("multi-label", 3)]
)
def test_metrics_are_medmnists(task_type: str, n_classes: int) -> None:
    rng = np.random.default_rng(0)
    n = 60
    if task_type == "multi-label":
        y = rng.integers(0, 2, (n, n_classes))
        score = rng.random((n, n_classes))
        pred = (score > 0.5).astype(int)
        f1 = f1_score(y, pred, average="macro")
    else:
        y = rng.integers(0, n_classes, (n, 1))
        score = rng.dirichlet(np.ones(n_classes), n)
        pred = (score[:, -1] > 0.5).astype(int) if task_type == "binary" else score.argmax(1)
        f1 = f1_score(y[:, 0], pred, average="macro")
    m = evaluate(task_type, y, score)
    task = medmnist_task(task_type)
    assert m["acc"] == pytest.approx(getACC(y, score, task))
    assert m["auc"] == pytest.approx(getAUC(y, score, task))
    assert m["f1_macro"] == pytest.approx(f1)
    assert objective_cost(m, "auc") == pytest.approx(1 - m["auc"])


def test_auc_with_a_class_missing_averages_the_defined_classes() -> None:
    y = np.array([[0], [1], [0], [1]])  # class 2 never occurs
    score = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    m = evaluate("multi-class", y, score)
    assert m["auc"] == pytest.approx(1.0) and m["auc_classes"] == 2
    with pytest.raises(InputError, match="at least 2"):
        evaluate("multi-class", y[:1], score[:1])
    assert objective_cost({"acc": math.nan}, "acc") == 1.0
    # one class only: AUC is undefined, None (never NaN, which PostgreSQL's json rejects);
    # predictions 0, 1, 0 (class 1 only above 0.5, as MedMNIST's ACC): ACC 2/3
    one = evaluate("binary", np.zeros((3, 1)), np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]]))
    assert one["auc"] is None and one["auc_classes"] == 0 and one["acc"] == pytest.approx(2 / 3)
    assert objective_cost(one, "auc") == 1.0


def test_macro_f1_averages_over_the_classes_present() -> None:
    # perfect predictions on a 3-class split without class 2: F1 is 1, not 2/3
    y = np.array([[0], [1], [0], [1]])
    m = evaluate("multi-class", y, np.eye(3)[y[:, 0]])
    assert m["f1_macro"] == pytest.approx(1.0) and m["f1_classes"] == 2
    # a class predicted but absent from the truth counts (its F1 is 0)
    m = evaluate("ordinal", y, np.eye(3)[[0, 1, 2, 1]])
    assert m["f1_classes"] == 3 and m["f1_macro"] < 1.0
    # multi-label: a label without positives in truth and predictions is left out
    yl = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    m = evaluate("multi-label", yl, yl * 0.9)
    assert m["f1_macro"] == pytest.approx(1.0) and m["f1_classes"] == 2
    # multi-label with a single label (MedMNIST's functions raise IndexError on it)
    m = evaluate("multi-label", np.array([[0], [1], [1]]), np.array([[0.2], [0.8], [0.4]]))
    assert m["acc"] == pytest.approx(2 / 3) and m["auc"] == pytest.approx(1.0)
    assert m["f1_macro"] == pytest.approx(f1_score([0, 1, 1], [0, 1, 0]))  # of label 0


def test_ranks_get_equal_shares_of_the_rows() -> None:
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    shares = [rank_share(order, r, 3) for r in range(3)]
    assert [len(x) for x in shares] == [3, 3, 3]  # 2 rows dropped: equal batch counts
    assert len(set(torch.cat(shares).tolist())) == 9
    assert torch.equal(rank_share(order, 0, 1), order)


# ----------------------------------------------------------------------------- space


def test_space_conditions_and_forbidden_pairs() -> None:
    cs = build_space(
        SpaceOptions(encoder_arch="resnet18", model_arch="small_cnn", extra_data=True), seed=1
    )
    for c in cs.sample_configuration(200):
        v = dict(c)
        if v["init"] == "scratch":
            assert v["mode"] == "full"
        if v["init"] == "encoder":
            assert v["arch"] == "resnet18"
        if v["init"] == "model":
            assert v["arch"] == "small_cnn"
        assert ("lr" in v) == (v["mode"] in ("full", "freeze_unfreeze"))
        assert ("lr_head" in v) == (v["mode"] in ("linear_probe", "freeze_unfreeze"))
        assert ("extra_n" in v) == (v["extra_data"] == "nearest")
    plain = build_space()
    assert "init" not in plain and "extra_data" not in plain


def test_warm_start_file_errors_name_the_entry(tmp_path: Path) -> None:
    cs = build_space()
    good = tmp_path / "warm.yaml"
    good.write_text("- {arch: resnet18, lr: 0.01}\n- {arch: small_cnn, optimizer: sgd}\n")
    configs = load_initial_configs(good, cs)
    assert [dict(c)["arch"] for c in configs] == ["resnet18", "small_cnn"]
    assert dict(configs[1])["momentum"] == pytest.approx(0.9)  # default filled in
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {arch: resnet18}\n- {arch: small_cnn, batch_size: 33}\n")
    with pytest.raises(InputError, match=r"bad.yaml: entry 1: value 33 of 'batch_size'"):
        load_initial_configs(bad, cs)
    bad.write_text("- {arch: small_cnn, lr_decay: 0.1}\n")
    with pytest.raises(InputError, match=r"entry 0: unknown hyperparameter\(s\) lr_decay"):
        load_initial_configs(bad, cs)
    bad.write_text("- {arch: small_cnn, momentum: 0.5}\n")  # momentum needs optimizer=sgd
    with pytest.raises(InputError, match="'momentum' is inactive"):
        load_initial_configs(bad, cs)


def test_entries_left_out_of_a_warm_start_each_get_a_reason() -> None:
    """``split_fitting`` (create_study's ``drop_unfit_initial``): an entry that is no mapping
    at all is left out with the same message as a strict warm start gives, not a TypeError."""
    entries = [{"arch": "small_cnn"}, 5, {"arch": "small_cnn", "batch_size": 33}, None]
    kept, reasons = split_fitting(entries, build_space(), "initial configurations")
    assert kept == [0]
    assert reasons[0] == "initial configurations: entry 1: expected a mapping, got int"
    assert "entry 2: value 33 of 'batch_size'" in reasons[1]
    assert reasons[2] == "initial configurations: entry 3: expected a mapping, got NoneType"


# ----------------------------------------------------------------------------- engine


def test_train_checkpoints_each_epoch_and_resumes(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    ref = tiny_dataset(workspace, reg, "blood", sizes=(64, 24, 24))
    store = str(open_version(reg, ref).path)
    cfg = TrainConfig(arch="small_cnn", lr=3e-3, batch_size=32, augmentation="flip_crop")
    first = train(_request(store, tmp_path, cfg, 1))
    assert (first.start_epoch, first.epochs, len(first.history)) == (0, 1, 1)
    assert read_state(tmp_path / "work")["epoch"] == 1
    second = train(_request(store, tmp_path, cfg, 3))
    assert second.start_epoch == 1  # continued from the checkpoint, not from scratch
    assert [h["epoch"] for h in second.history] == [1, 2, 3]
    assert second.history[0] == first.history[0]
    assert sorted(p.name for p in (tmp_path / "work" / "ckpt").iterdir()) == ["epoch-3"]
    for split in ("val", "test"):
        assert set(second.metrics[split]) >= {"acc", "auc", "f1_macro"}
        assert 0.0 <= second.metrics[split]["acc"] <= 1.0
    model = load_classifier(tmp_path / "model-e3.pt")
    assert model.meta.arch == "small_cnn" and model.meta.num_classes == 8
    # batch norm statistics were recomputed over the training images under the final weights
    x, _ = open_version(reg, ref).read_split("train")
    xt = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        conv = model.model.features[0](xt)
    bn = model.model.features[1]
    assert torch.allclose(bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-4)
    assert model.meta.metrics["val"]["acc"] == pytest.approx(second.metrics["val"]["acc"])
    with pytest.raises(InputError, match="beyond the requested 2"):
        train(_request(store, tmp_path, cfg, 2))


def test_linear_probe_and_freeze_unfreeze_from_model_weights(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    ref = tiny_dataset(workspace, reg, "blood", sizes=(48, 16, 16))
    store = str(open_version(reg, ref).path)
    torch.manual_seed(3)
    donor = build_classifier("small_cnn", 5, 3)  # another task: 5 classes, not 8
    weights = tmp_path / "donor.pt"
    torch.save(donor.state_dict(), weights)
    init = _body(donor.state_dict(), "head.")
    probe = TrainConfig(
        arch="small_cnn",
        init="model",
        mode="linear_probe",
        lr_head=0.05,
        batch_size=16,
        augmentation="none",
    )
    res = train(_request(store, tmp_path / "p", probe, 1, init_weights=str(weights)))
    body_keys = [k for k in donor.state_dict() if not k.startswith("head.")]
    assert res.init_loaded == len(body_keys)  # everything but the 5-class head
    after = load_classifier(tmp_path / "p" / "model-e1.pt").model.state_dict()
    for k, v in init.items():
        assert torch.equal(after[k], v), k  # the body did not move, BN statistics included
    fu = TrainConfig(
        arch="small_cnn",
        init="model",
        mode="freeze_unfreeze",
        lr=1e-2,
        lr_head=0.05,
        unfreeze_epoch=1,
        batch_size=16,
        augmentation="none",
    )
    train(_request(store, tmp_path / "f", fu, 1, init_weights=str(weights)))
    frozen = load_classifier(tmp_path / "f" / "model-e1.pt").model.state_dict()
    assert all(torch.equal(frozen[k], v) for k, v in init.items())
    train(_request(store, tmp_path / "f", fu, 2, init_weights=str(weights)))
    unfrozen = load_classifier(tmp_path / "f" / "model-e2.pt").model.state_dict()
    assert not torch.equal(unfrozen["features.0.weight"], init["features.0.weight"])
    wrong = tmp_path / "wrong.pt"
    torch.save({"something.else": torch.zeros(3)}, wrong)
    with pytest.raises(InputError, match="no tensor matches"):
        train(_request(store, tmp_path / "w", probe, 1, init_weights=str(wrong)))


def test_encoder_weights_initialise_resnet18(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    from pomlia_hpc.fingerprint.autoencoder import Autoencoder, EncoderConfig
    from pomlia_hpc.registry import Encoder

    torch.manual_seed(0)
    ae = Autoencoder(EncoderConfig(latent_dim=8, stem="small"))
    ckpt = tmp_path / "encoder.pt"
    torch.save({"config": ae.config.model_dump(), "state_dict": ae.state_dict()}, ckpt)
    with reg.session() as s:
        s.add(Encoder(name="enc", config={"stem": "small"}, checkpoint_path=str(ckpt)))
    src = encoder_weights(reg, "enc", 3, tmp_path / "init" / "encoder.pt")
    assert src.arch == "resnet18" and src.name == "enc"
    net = build_classifier("resnet18", 4, 3)
    from pomlia_hpc.automl.engine import load_initial_weights

    loaded = load_initial_weights(net, src.path, "fc.")
    assert loaded == len(net.state_dict()) - 2  # everything but the classifier head
    assert torch.equal(net.conv1.weight, ae.encoder.conv1.weight)


def test_weights_whose_only_match_is_batch_norm_counters_are_refused(tmp_path: Path) -> None:
    """A BatchNorm layer's ``num_batches_tracked`` is a 0-d count that has the same shape in
    every network with that layer name: weights of another network that matched by those
    counters alone were taken (the trial then trained from scratch, its weights said used)."""
    from pomlia_hpc.automl.engine import load_initial_weights

    net = build_classifier("resnet18", 4, 3)
    counters = {k: v for k, v in net.state_dict().items() if k.endswith("num_batches_tracked")}
    assert counters
    torch.save(counters, path := tmp_path / "counters.pt")
    with pytest.raises(InputError, match="no tensor matches the network's names and shapes"):
        load_initial_weights(net, str(path), "fc.")


def test_zero2_bf16_on_a_multilabel_task(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    ref = tiny_dataset(workspace, reg, "chest", flag="chestmnist", sizes=(32, 16, 16))
    store = open_version(reg, ref)
    cfg = TrainConfig(
        arch="small_cnn", lr=3e-3, batch_size=16, optimizer="sgd", augmentation="flip"
    )
    res = train(
        _request(
            str(store.path),
            tmp_path,
            cfg,
            1,
            task_type="multi-label",
            options=EngineOptions(threads=1, zero_stage=2, bf16=True),
        )
    )
    assert res.metrics["test"]["n"] == 16
    assert 0.0 <= res.metrics["test"]["acc"] <= 1.0 and math.isfinite(res.history[0]["train_loss"])
    model = load_classifier(tmp_path / "model-e1.pt")
    assert model.meta.task_type == "multi-label" and model.meta.num_classes == 14
    # extra images in the task's label space are added to training
    x, _ = store.read_split("train")
    extra = tmp_path / "extra.npz"
    np.savez(extra, images=x[:10], labels=np.ones((10, 14), np.int32))
    cfg2 = TrainConfig(arch="small_cnn", batch_size=16, augmentation="none", extra_n=6)
    res2 = train(
        _request(
            str(store.path), tmp_path / "x", cfg2, 1, task_type="multi-label", extra_data=str(extra)
        )
    )
    assert res2.n_train == 32 + 6
    np.savez(extra, images=x[:10, :20], labels=np.ones((10, 14), np.int32))
    with pytest.raises(InputError, match="extra data"):
        train(
            _request(
                str(store.path),
                tmp_path / "y",
                cfg2,
                1,
                task_type="multi-label",
                extra_data=str(extra),
            )
        )
