"""``backend: auto`` says why a server answers on its CPU (a GPU node whose GPUs are hidden,
or whose driver torch cannot use, must not look like a CPU node in the log)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.runtime import (
    GPU_DEVICE_FILES,
    gpu_may_be_visible,
    load_runtime,
    no_gpu_reason,
)


# CUDA takes the list up to its first invalid entry: "-1,0" is no GPU (it loaded torch), and so
# is Slurm's "NoDevFiles".
@pytest.mark.parametrize("hidden", ["", "-1", " -1 ", "-1,0", ",0", "NoDevFiles"])
def test_hidden_gpus_are_named_as_the_reason_for_the_cpu(
    hidden: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    assert not gpu_may_be_visible()
    with caplog.at_level(logging.INFO, logger="pomlia.serve"):
        runtime = load_runtime(ExportedBundle.open(Path(bundle)), "auto", 1)
    assert (runtime.backend, runtime.device) == ("onnx", "cpu")
    assert f"CUDA_VISIBLE_DEVICES={hidden.strip()!r} hides every GPU" in caplog.text


@pytest.mark.parametrize(
    "visible", ["0", "0,-1", " 1", "GPU-8f3c2d1e-0000-1111-2222-333344445555,1", "MIG-1,0"]
)
def test_a_gpu_list_does_not_hide_the_gpus(visible: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list of indices or UUIDs leaves the decision to the driver's device files (and then
    to torch)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert "CUDA_VISIBLE_DEVICES" not in (no_gpu_reason() or "")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="device files are Linux's")
@pytest.mark.parametrize("device", ["nvidiactl", "nvhost-ctrl-gpu", "nvgpu", "kfd"])
def test_a_gpu_drivers_device_file_leaves_it_to_torch(
    device: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A Jetson has no /dev/nvidiactl (its integrated GPU is nvgpu's): it was taken for a CPU
    node and answered on its CPU."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert no_gpu_reason(tmp_path) == (
        "no GPU driver device file (" + ", ".join(str(tmp_path / n) for n in GPU_DEVICE_FILES) + ")"
    )
    (tmp_path / device).touch()
    assert no_gpu_reason(tmp_path) is None
