"""A model whose output is not finite gets no made-up answer: a real exported model that
overflows on bright images, served over real HTTP.

Its first conv averages each 3x3 neighbourhood of the three channels and its batch norm
subtracts 0.98, so only near-white regions (all 27 values above about 252 of 255) pass the
ReLU; later layers multiply what passes by 1e12 and the head by 1e30: float32 overflows to
infinity there, and nothing else does (the export's parity inputs, noise and smooth images,
hold no such region, so the export passes). Before, the server answered such an image with
the argmax of NaN probabilities: class 0, made up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from pomlia_hpc.data.api import ingest
from pomlia_hpc.errors import InputError
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.models.checkpoint import save_classifier
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.export import export_checkpoint, export_model
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.predictor import NONFINITE_REASON
from pomlia_hpc.serve.records import PredictionLine, RejectionLine
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import npy

TOKEN = "nonfinite-token-0123456789abcdef"


def _overflowing_net() -> torch.nn.Module:
    net = build_classifier("small_cnn", 2, 3, image_size=28)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        convs[0].weight[0] = 1.0 / 27  # the mean of a 3x3 neighbourhood of 3 channels
        convs[1].weight[0, 0, 1, 1] = 1e6
        convs[2].weight[0, 0, 1, 1] = 1e6
        for bn in norms:
            bn.weight.fill_(1.0)
        norms[0].running_mean[0] = 0.98  # normalised pixels are in [-1, 1]
        net.head.weight[1, 0] = 1e30
    return net


def _checkpoint(path: Path) -> Path:
    save_classifier(
        path,
        _overflowing_net(),
        arch="small_cnn",
        num_classes=2,
        in_channels=3,
        image_size=28,
        task_type="binary",
        label_names=["negative", "positive"],
    )
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    root = tmp_path_factory.mktemp("nonfinite")
    ckpt = _checkpoint(root / "overflow.pt")
    bundle = export_checkpoint(ckpt, root / "bundles", name="overflow").bundle.root
    with LocalServer(bundle, root / "logs", env={"POMLIA_SERVE_TOKEN": TOKEN}) as srv:
        yield srv


def _post(server: LocalServer, images: np.ndarray) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/predict",
        content=npy(images),
        headers={"content-type": "application/x-npy"},
        timeout=30,
    )


def test_a_non_finite_output_is_a_500_logged_as_a_rejection_not_a_class(
    server: LocalServer,
) -> None:
    grey = np.full((28, 28, 3), 128, np.uint8)
    white = np.full((28, 28, 3), 255, np.uint8)

    ok = _post(server, grey)
    assert ok.status_code == 200, ok.text
    assert ok.json()["predictions"][0]["label"] == "negative"

    alone = _post(server, white)
    assert alone.status_code == 500, alone.text
    error = alone.json()["error"]
    assert "non-finite outputs" in error and "1 of the request's 1 image(s) (index 0)" in error
    assert "predictions" not in alone.json()

    # One bad image in a batch: the whole request is refused, none of it answered.
    batch = _post(server, np.stack([grey, white, grey]))
    assert batch.status_code == 500 and "(index 1)" in batch.json()["error"], batch.text

    server.stop()  # flushes the log
    rejections = list(read_records(server.log_dir, RejectionLine))
    assert [(r.status, r.reason) for r in rejections] == [(500, NONFINITE_REASON)] * 2
    assert len(list(read_records(server.log_dir, PredictionLine))) == 1


def test_a_model_with_non_finite_outputs_on_its_validation_images_gets_no_reference(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """The monitoring reference counted the argmax of NaN (class 0) as the model's answer on
    such images; now the export says so and leaves no bundle (the server would refuse them)."""
    grey = np.full((10, 28, 28, 3), 128, np.uint8)
    grey[:, 0, 0, 0] = np.arange(10)  # no two images alike
    val = grey.copy()
    val[:3] = 255  # three white validation images: the model overflows on them
    npz = tmp_path / "d.npz"
    np.savez(
        npz,
        **{f"{s}_images": x for s, x in (("train", grey), ("val", val), ("test", grey + 1))},
        **{f"{s}_labels": np.arange(10)[:, None] % 2 for s in ("train", "val", "test")},
    )
    version = ingest(workspace, reg, "d", npz, class_names=["negative", "positive"])
    ckpt = _checkpoint(tmp_path / "overflow.pt")
    register_model(reg, "overflow", ckpt, lineage={"dataset_version_id": version.id})
    with pytest.raises(InputError, match=r"non-finite outputs .* for 3 of the 10 reference"):
        export_model(reg, workspace, "overflow")
    assert not list(workspace.path("models", "overflow", "bundles").glob("*/card.json"))
