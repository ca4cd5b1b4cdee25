"""The shared DeepSpeed harness in bf16: batch norm's running statistics are cast with the
parameters, so a bf16 step runs. (A CUDA-only crash of every AutoML trial came from the
classifier skipping this cast off the CPU; the cast is now the same on every device. This test
runs the CPU; the CUDA run itself needs a GPU: scripts/gpu_automl_check.sh.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pomlia_hpc.cluster.distributed import distributed_env

STEP = textwrap.dedent(
    """
    import torch
    from torch import nn
    from pomlia_hpc.training import initialize

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(2))
    model(torch.zeros(2, 3, 8, 8))  # materialise the lazy layer
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = initialize(model, opt, batch_size=4, zero_stage=0, bf16=True)
    bn = engine.module[1]
    assert bn.running_mean.dtype == torch.bfloat16, bn.running_mean.dtype
    assert bn.weight.dtype == torch.bfloat16, bn.weight.dtype
    x = torch.randn(4, 3, 8, 8, dtype=torch.bfloat16)
    loss = engine(x).float().logsumexp(1).mean()
    engine.backward(loss)
    engine.step()
    print("bf16 step ok")
    """
)


@pytest.mark.timeout(300)
def test_a_bf16_engine_casts_batch_norm_statistics_and_steps() -> None:
    # A process of its own: DeepSpeed initialises a process group for the whole process.
    env = {**os.environ, **distributed_env({"SUBMITIT_EXECUTOR": "local"})}
    res = subprocess.run(
        [sys.executable, "-c", STEP], env=env, capture_output=True, text=True, timeout=280
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "bf16 step ok" in res.stdout
