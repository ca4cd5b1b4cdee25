"""``scripts/gpu_check.sh``: its CPU smoke run executes every step, and without a GPU the CUDA run
stops at once with exit 3 and a reason. (The CUDA paths themselves need a GPU machine.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def _run(timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "PY": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_cpu_smoke_run_executes_every_step(tmp_path: Path) -> None:
    # The script's own wall limit (LIMIT_S, 450 s) is sized for a GPU lease; a loaded CPU
    # machine may take longer for its three trainings, and that is no failure here.
    # Each step only has to run here, so its trainings are one batch of 32 each: the script's
    # batch of 512 for the first cost ~35 s more CPU for nothing more checked.
    res = _run(
        timeout=960,
        DEVICE="cpu",
        IMAGES="128",  # the store: one extraction batch
        EPOCH_IMAGES="40",  # 36 kept after the held-out share: one batch of EPOCH_BATCH
        EPOCH_BATCH="32",
        OBJECTIVE_IMAGES="40",  # 36 kept: one batch of 32 for style and contrastive
        VECTORS="20000",
        SERVE="small_cnn:28",
        SERVE_S="0.2",  # a figure's measuring time: it only has to run here
        LIMIT_S="900",
        EXECUTOR="debug",  # the trainings in the script's process: a job process each cost ~10 s
        TMPDIR=str(tmp_path),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # Its workspace (store, encoders, shards) is gone once it ends.
    assert not list(tmp_path.glob("pomlia-gpu-check-*"))
    table = res.stdout[res.stdout.index("GPU check (CPU smoke run") :]
    assert re.search(r"DeepSpeed fp32 epoch \(CPU\)\s+\d+ img/s\s+loss \d", table), table
    for objective in ("style", "contrastive"):
        assert re.search(rf"{objective} objective epoch\s+\d+ img/s\s+loss \d", table), table
    assert re.search(r"extraction \(cpu\)\s+\d+ img/s\s+raw forward \d+ img/s", table), table
    m = re.search(r"faiss-cpu IVF78 nprobe 32\s+\d+ q/s\s+recall@10 ([0-9.]+)", table)
    assert m is not None, table
    assert float(m.group(1)) > 0.5  # a working IVF search, not an empty one
    # The server's torch backend and its onnxruntime backend give the same classes.
    m = re.search(r"serve small_cnn 28 px, cpu\s+\d+ img/s.*argmax agree ([0-9.]+)", table)
    assert m is not None, table
    assert float(m.group(1)) == 1.0


def test_cuda_run_without_gpu_exits_3_with_reason() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the no-GPU path is not reachable")
    res = _run()
    assert res.returncode == 3
    assert "nvidia-smi not found" in res.stderr


def test_killed_by_its_limit_leaves_no_workspace(tmp_path: Path) -> None:
    # 3 s: the script's Python is still importing (its workspace made before it starts), and
    # every second until the kill is a second of CPU spent on nothing checked.
    res = _run(timeout=120, DEVICE="cpu", IMAGES="800", LIMIT_S="3", TMPDIR=str(tmp_path))
    assert res.returncode == 137, res.stdout + res.stderr  # timeout --signal=KILL
    assert not list(tmp_path.glob("pomlia-gpu-check-*"))


def test_bad_device_is_refused() -> None:
    res = _run(DEVICE="tpu")
    assert res.returncode == 3 and "DEVICE must be cuda or cpu" in res.stderr
    res = _run(DEVICE="cpu", EXECUTOR="slurm")
    assert res.returncode == 3 and "EXECUTOR must be local or debug, got 'slurm'" in res.stderr


AUTOML_SCRIPT = SCRIPT.with_name("gpu_automl_check.sh")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_automl_check_cpu_smoke_run_trains_in_bf16_and_on_the_baseline(tmp_path: Path) -> None:
    res = subprocess.run(
        ["bash", str(AUTOML_SCRIPT)],
        env={
            **os.environ,
            "PY": sys.executable,
            "DEVICE": "cpu",
            "SCALE": "0.01",  # 120 training images (one batch), 17 val, 34 test: bf16 on a
            # CPU is slow (~0.1 s an image), and the trials only have to run
            "TRIALS": "1",
            "CPU_TRIALS": "1",
            "EPOCHS": "1",
            "ARCHS": "small_cnn",
            "EXECUTOR": "debug",  # the trials in the driver's process
            "TMPDIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=560,
    )
    out = " ".join(res.stdout.split())
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"study on-cpu: 1 trials in \d+ s", out), out
    assert re.search(r"study baseline-cpu: 1 trials in \d+ s", out), out
    assert "crashed" not in out.replace("0 crashed", "")
    assert not list(tmp_path.glob("pomlia-gpu-automl-*"))


def test_automl_check_without_gpu_exits_3() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the no-GPU path is not reachable")
    res = subprocess.run(
        ["bash", str(AUTOML_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PY": sys.executable},
    )
    assert res.returncode == 3
    assert "no nvidia-smi" in res.stderr
    res = subprocess.run(
        ["bash", str(AUTOML_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PY": sys.executable, "DEVICE": "cpu", "EXECUTOR": "slurm-local"},
    )
    assert res.returncode == 3
    assert "EXECUTOR must be local or debug, got 'slurm-local'" in res.stderr
