"""A multi-label model's label is predicted when its sigmoid is above 0.5 in every place that
decides it: the task's ACC, the gate, the server's answer and the monitoring reference. A
sigmoid of exactly 0.5 (a logit of 0) was "present" to the server and the reference and
"absent" to the metrics and the gate, so the reference's accuracy on the validation split was
not the model's recorded validation ACC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pomlia_hpc.automl.metrics import evaluate
from pomlia_hpc.data.api import ingest
from pomlia_hpc.loop.gate import labelwise_accuracy
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.export import export_model
from pomlia_hpc.serve.reference import read_reference
from pomlia_hpc.serve.runtime import probabilities
from pomlia_hpc.workspace import Workspace
from tests.loop_support import register_small_cnn
from tests.monitor_support import log_predictions

LABELS = ["l0", "l1", "l2"]
#: Every image's logits: label 0 exactly on the threshold, 1 present, 2 absent.
LOGITS = [0.0, 4.0, -4.0]


def test_a_sigmoid_of_one_half_is_absent_everywhere(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    rng = np.random.default_rng(0)
    sizes = {"train": 12, "val": 10, "test": 6}
    arrays = {}
    for split, n in sizes.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        y = rng.integers(0, 2, (n, 3))
        y[0], y[1] = (0, 1, 0), (1, 1, 0)  # label 0 both absent and present
        arrays[f"{split}_labels"] = y
    npz = tmp_path / "ml.npz"
    np.savez(npz, **arrays)
    version = ingest(workspace, reg, "ml", npz, class_names=LABELS, task_type="multi-label")
    net = build_classifier("small_cnn", len(LABELS), 3, image_size=28)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor(LOGITS))
    model = register_small_cnn(reg, tmp_path, "ml-model", net, version.id, "multi-label", LABELS)

    val_x, val_y = arrays["val_images"], arrays["val_labels"]
    probs = probabilities(np.tile([LOGITS], (len(val_y), 1)), "multi-label")
    acc = evaluate("multi-label", val_y, probs)["acc"]
    # the gate: label-wise accuracy per image, its mean the task's ACC
    assert labelwise_accuracy(model, val_x, val_y).mean() == pytest.approx(acc)
    # the monitoring reference written at export (from the validation split)
    res = export_model(reg, workspace, "ml-model")
    assert res.reference is not None
    ref = read_reference(res.reference)
    assert ref.accuracy == pytest.approx(acc)
    assert (ref.pred_index.reshape(len(val_y), -1)[:, 0] == 0).all()
    # the server's answer: label 1 only
    records = log_predictions(workspace, res.bundle.root, val_x[:2])
    assert [r["output"]["label_index"] for r in records] == [[1], [1]]
