"""Shared set-up of the leakage tests (`automl run --init-model` / `--encoder` refusals): a task
on random images, the same images under another name with some of the task's val and test
images moved into train, and `pomlia automl run` as the console script runs it, stopped once
the study was accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pomlia_hpc.automl.tasks import add_task
from pomlia_hpc.data.api import VersionRecord, ingest
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main
from tests.loop_support import CLASSES


def npz(path: Path, splits: dict[str, np.ndarray]) -> Path:
    """``splits`` (split name -> images (N, H, W, C)) written as one npz with cycling labels."""
    labels = {f"{s}_labels": np.arange(len(v))[:, None] % len(CLASSES) for s, v in splits.items()}
    np.savez(path, **{f"{s}_images": v for s, v in splits.items()}, **labels)
    return path


def interrupted(*_a: Any, **_k: Any) -> None:
    """Stands in for ``run_study``: the study was accepted, no trial needs to run."""
    raise KeyboardInterrupt


def automl_run(
    mp: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    ref: str,
    study: str,
    *more: str,
) -> tuple[int, str]:
    """``pomlia automl run t FLAG REF --trials 1 --study STUDY [MORE]``: exit code and the
    output on one line."""
    args = ["automl", "run", "t", flag, ref, "--trials", "1", "--study", study, *more]
    code, out, err = pomlia_main(mp, capsys, *args)
    return int(code or 0), " ".join((out + err).split())


def leaky_copy(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> tuple[dict[str, np.ndarray], VersionRecord, VersionRecord]:
    """Task ``t`` (acc) on data set ``scans`` (40 / 12 / 12 random images), and data set
    ``older``: the same images, 2 of the task's val and 5 of its test images in its train
    split. Returns the images by split and both ingests."""
    rng = np.random.default_rng(0)
    x = {s: rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8) for s, n in
         (("train", 40), ("val", 12), ("test", 12))}  # fmt: skip
    task_data = ingest(workspace, reg, "scans", npz(tmp_path / "a.npz", x), class_names=CLASSES)
    add_task(reg, "t", task_data.ref, "acc")
    leaky = {"train": np.concatenate([x["train"], x["val"][:2], x["test"][:5]])}
    leaky |= {"val": x["val"][2:], "test": x["test"][5:]}
    other = ingest(workspace, reg, "older", npz(tmp_path / "b.npz", leaky), class_names=CLASSES)
    return x, task_data, other
