"""Uploads are read as ingest read the training images: 16-bit scaling, alpha, palette, grey
for a colour model; and what `model export` records about the training data in the card."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.automl.tasks import add_task
from pomlia_hpc.data.api import ingest
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import save_demo_checkpoint
from pomlia_hpc.serve.export import export_model
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import npy

#: The largest value of the 16-bit training set below (a 12-bit scanner's range).
TOP = 3999


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    img.save(buf, "PNG")
    return buf.getvalue()


def sixteen_bit_folder(root: Path) -> Path:
    """train/val/test folders of 28 px grey 16-bit PNGs, 'dim' < 2000 <= 'bright' <= TOP."""
    rng = np.random.default_rng(3)
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for k, label in enumerate(("dim", "bright")):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 2000, (28, 28)) + 2000 * k
                arr[0, 0] = TOP if (k, i, split) == (1, 0, "train") else arr[0, 0]
                Image.fromarray(arr.astype(np.uint16)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Workspace]]:
    """A grey 2-class model of a task on a 16-bit data set, exported: (bundle, workspace)."""
    home = tmp_path_factory.mktemp("ws") / "home"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    try:
        folder = sixteen_bit_folder(tmp_path_factory.mktemp("sp16"))
        rec = ingest(ws, reg, "sp16", folder, workers=1)
        task = add_task(reg, "t16", f"sp16@{rec.version}", "acc")
        ckpt = save_demo_checkpoint(ws.path("models", "m16.pt"), channels=1, num_classes=2)
        register_model(reg, "m16", ckpt, task_id=task.id)
        yield export_model(reg, ws, "m16").bundle.root, ws
    finally:
        reg.dispose()


def test_the_card_records_the_training_scaling_and_the_task_metric(
    exported: tuple[Path, Workspace],
) -> None:
    card = json.loads((exported[0] / "card.json").read_text())
    scaling = card["input"]["intensity_scaling"]
    assert scaling["from"] == "uint16" and scaling["max"] == TOP
    assert card["task"]["metric"] == "acc"
    assert "min(x, max) * 255 / max" in card["preprocessing"]["input_scaling"]["uint16"]


@pytest.fixture(scope="module")
def client(exported: tuple[Path, Workspace]) -> Iterator[httpx.Client]:
    srv = LocalServer(exported[0], exported[1].path("logs"))
    with srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c


def probabilities(client: httpx.Client, data: bytes, ctype: str) -> list[float]:
    resp = client.post("/v1/predict", content=data, headers={"content-type": ctype})
    assert resp.status_code == 200, resp.text
    return [float(p) for p in resp.json()["predictions"][0]["probabilities"].values()]


def test_a_16_bit_upload_is_scaled_as_ingest_scaled_the_training_set(
    client: httpx.Client,
) -> None:
    raw = np.random.default_rng(5).integers(2000, TOP + 1, (28, 28)).astype(np.uint16)
    stored = (raw.astype(np.float32) * (255.0 / TOP) + 0.5).astype(np.uint8)  # as ingest stores
    got = probabilities(client, png(raw), "image/png")
    assert got == pytest.approx(probabilities(client, npy(stored), "application/x-npy"), abs=1e-6)
    # Brighter than anything in training: saturates at the training maximum, never wraps.
    brighter = probabilities(client, npy(np.full((28, 28), 65000, np.uint16)), "application/x-npy")
    full = probabilities(client, npy(np.full((28, 28), 255, np.uint8)), "application/x-npy")
    assert brighter == pytest.approx(full, abs=1e-6)


@pytest.mark.parametrize("mode", ["LA", "1", "P", "RGB", "RGBA"])
def test_image_kinds_ingest_accepts_are_served_like_ingest_reads_them(
    client: httpx.Client, mode: str
) -> None:
    grey = np.random.default_rng(7).integers(0, 256, (28, 28)).astype(np.uint8)
    ingested = np.asarray(Image.fromarray(grey).convert(mode).convert("L"))
    want = probabilities(client, npy(ingested), "application/x-npy")
    if mode in ("P", "RGB", "RGBA"):  # a colour file for a grey model: ingest made it colour
        body = png(grey, mode)
        resp = client.post("/v1/predict", content=body, headers={"content-type": "image/png"})
        assert (
            resp.status_code == 400
            and "3 channel(s) (colour), the model expects 1 (grey)" in resp.text
        )
        return
    assert probabilities(client, png(grey, mode), "image/png") == pytest.approx(want, abs=1e-6)


def test_image_jpg_is_jpeg_and_sizes_are_named_high_and_wide(client: httpx.Client) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, "JPEG")
    resp = client.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "image/jpg"})
    assert resp.status_code == 200, resp.text
    wide = png(np.zeros((10, 50), np.uint8))
    resp = client.post("/v1/predict", content=wide, headers={"content-type": "image/png"})
    assert resp.status_code == 400
    assert "image is 10 px high, 50 px wide, the model expects 28 px high, 28 px wide" in resp.text
