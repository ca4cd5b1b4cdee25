"""Running the exported classifier: onnxruntime on CPU, the ``torch.export`` program on GPU.

``auto`` picks the torch program on CUDA when a GPU is visible and onnxruntime otherwise. The
onnxruntime session does not spin-wait between runs: spinning threads would take the cores the
event loop needs to parse the next requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pomlia_hpc.errors import InputError
from pomlia_hpc.processes import cpus_available
from pomlia_hpc.serve.exported import (
    LEGACY_TORCHSCRIPT,
    ONNX,
    TORCH_PROGRAM,
    ExportedBundle,
    reexport_hint,
)
from pomlia_hpc.serve.programs import check_program

log = logging.getLogger("pomlia.serve")

LogitsFn = Callable[[np.ndarray], np.ndarray]
BACKENDS = ("auto", "onnx", "torch")

#: Decimals the prediction log keeps of each probability (the predictor rounds to them, and a
#: monitoring reference keeps its probabilities so rounded: an AUC's ties must be the same on
#: both sides, or a confident model's window would rank worse than its reference).
LOGGED_DECIMALS = 6


def default_threads() -> int:
    """CPU threads for inference: the Slurm allocation if any, else the cores we may use."""
    return cpus_available()


@dataclass(frozen=True)
class Runtime:
    """A loaded model: ``logits(x)`` maps float32 NCHW to (N, num_classes) float32."""

    backend: str
    device: str
    logits: LogitsFn


#: Device files of a GPU driver under ``/dev``: NVIDIA's discrete driver, Jetson's integrated
#: GPU (``nvgpu``: no ``nvidiactl`` there, JetPack 4 to 6), ROCm's (whose devices torch also
#: calls CUDA) and WSL2's. A Linux node without any of them has no GPU that torch could use.
#: Wrongly absent, a GPU node would answer on its CPU; wrongly present, a CPU node only loads
#: torch to hear that it has none: so a device name of any GPU torch may use is listed.
GPU_DEVICE_FILES = ("nvidiactl", "nvidia0", "nvhost-ctrl-gpu", "nvgpu", "kfd", "dxg")
#: The ordinal at the start of a ``CUDA_VISIBLE_DEVICES`` entry (as ``strtoul`` reads it).
_ORDINAL = re.compile(r"[+-]?[0-9]+")


def gpu_may_be_visible() -> bool:
    """Whether this process may see a GPU, told without importing torch: false when
    ``CUDA_VISIBLE_DEVICES`` hides every device or, on Linux, when no GPU driver's device
    file exists. Why: ``backend: auto`` imported torch to learn that a CPU node has no GPU,
    and a CPU server then held torch's libraries for its whole life (about 400 MB more
    resident memory for a 30 MB ONNX model)."""
    return no_gpu_reason() is None


def hides_every_gpu(value: str) -> bool:
    """Whether ``CUDA_VISIBLE_DEVICES=value`` leaves CUDA no device. CUDA takes the entries up
    to the first invalid one, so the list hides every GPU exactly when its first entry is
    invalid whatever the node has: empty, a negative ordinal (``-1``, ``-1,0``) or neither an
    ordinal nor a ``GPU-``/``MIG-`` UUID (Slurm's ``NoDevFiles``). An ordinal the node lacks
    (``7`` on a 4-GPU node) is left to torch, which knows how many there are."""
    first = value.split(",", 1)[0].strip()
    if first.startswith(("GPU-", "MIG-")):
        return False
    m = _ORDINAL.match(first)
    return m is None or int(m.group()) < 0


def no_gpu_reason(dev: Path = Path("/dev")) -> str | None:
    """Why this process sees no GPU, told without importing torch (see
    :func:`gpu_may_be_visible`); None when it may see one. ``dev``: where device files are."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hides_every_gpu(hidden):
        return f"CUDA_VISIBLE_DEVICES={hidden.strip()!r} hides every GPU"
    if not sys.platform.startswith("linux"):
        return None  # torch is asked
    if any((dev / name).exists() for name in GPU_DEVICE_FILES):
        return None
    return f"no GPU driver device file ({', '.join(str(dev / n) for n in GPU_DEVICE_FILES)})"


def _cuda_absence() -> str | None:
    """Why ``backend: auto`` cannot use a GPU here, or None when torch sees one."""
    if (reason := no_gpu_reason()) is not None:
        return reason
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return (
            "torch sees no usable GPU (torch.cuda.is_available() is false; a driver that "
            "cannot be used is named in torch's warning)"
        )
    return None


def load_runtime(
    bundle: ExportedBundle, backend: str = "auto", threads: int | None = None
) -> Runtime:
    """Load the bundle's model with ``backend`` (``auto``, ``onnx`` or ``torch``)."""
    if backend not in BACKENDS:
        raise InputError(f"backend '{backend}' is unknown; expected one of {', '.join(BACKENDS)}")
    threads = threads or default_threads()
    if backend == "auto":
        backend = "onnx"
        if bundle.file(TORCH_PROGRAM) is not None:
            if (why := _cuda_absence()) is None:
                backend = "torch"
            else:  # said, so that a GPU node answering on its CPU is seen at once
                log.info("backend auto: onnxruntime on the CPU: %s", why)
    if backend == "onnx":
        path = bundle.file(ONNX)
        if path is None:
            raise InputError(f"{bundle.root}: the bundle has no {ONNX}")
        return Runtime("onnx", "cpu", _onnx_logits(str(path), threads))
    path = bundle.file(TORCH_PROGRAM)
    if path is None:
        if bundle.file(LEGACY_TORCHSCRIPT) is not None:
            raise InputError(reexport_hint(bundle.root, f"its GPU model, {LEGACY_TORCHSCRIPT},"))
        raise InputError(f"{bundle.root}: the bundle has no {TORCH_PROGRAM}")
    return _torch_runtime(str(path), threads)


def _onnx_logits(path: str, threads: int) -> LogitsFn:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def logits(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {name: x})[0], dtype=np.float32)

    return logits


def _torch_runtime(path: str, threads: int) -> Runtime:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(threads)
    module = load_program(path, device)

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(device, non_blocking=True)
            return module(t).float().cpu().numpy()

    return Runtime("torch", device, logits)


def load_program(path: str, device: str = "cpu") -> Callable[..., Any]:
    """The ``torch.export`` program saved at ``path`` as a callable module on ``device``.

    The program was exported on CPU; its weights and any device constants are moved with
    ``move_to_device_pass`` (``Module.to`` is not allowed on an exported program's module).
    An archive that could run code when read (pickled objects, compiled libraries, guard
    code, see :mod:`pomlia_hpc.serve.programs`) is refused with an :class:`InputError`
    before torch opens it."""
    import torch
    from torch.export.passes import move_to_device_pass

    check_program(Path(path))
    with _LOAD_LOCK, _weights_only_loads():
        program = torch.export.load(path)
    if device != "cpu":
        program = move_to_device_pass(program, device)
    return program.module()


# One program load at a time: the guard below is process-wide (an environment variable), and
# a second load finishing first would otherwise lift it while the first still reads (a hot
# swap's load in the watcher thread beside a ``/v1/reload``). Loads are rare and short.
_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force ``weights_only=True`` on every ``torch.load`` inside (torch reads
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` on each call): a second guard behind
    :func:`check_program`, for the sample inputs, whose loader falls back to a full unpickle."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def to_nchw(images: np.ndarray) -> np.ndarray:
    """Float32 NHWC → a new contiguous float32 NCHW array."""
    n, h, w, c = images.shape
    out = np.empty((n, c, h, w), dtype=np.float32)
    np.copyto(out, images.transpose(0, 3, 1, 2))
    return out


def normalize_(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean[c]) / std[c]`` on float32 NCHW, in place (one pass each, no temporaries)."""
    x -= mean.reshape(1, -1, 1, 1)
    x *= (1.0 / std).astype(np.float32).reshape(1, -1, 1, 1)
    return x


def probabilities(logits: np.ndarray, task_type: str) -> np.ndarray:
    """Sigmoid per label for multi-label tasks, softmax over labels otherwise."""
    z = logits.astype(np.float64)
    if task_type == "multi-label":
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
