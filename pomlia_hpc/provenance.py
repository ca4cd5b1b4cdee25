"""What a result was made with, recorded beside it so that it can be made again.

A seed and a configuration repeat a run only with the same code: a new torch, NumPy or SMAC
release may change the initial weights, a kernel's summation order or the configurations a
seed samples (docs/guide/reproducibility.md). :func:`software` names the versions that decide
a result (read from the installed packages' metadata: nothing is imported, so registry
commands load no torch) and, where torch is already loaded in this process (a training job),
its CUDA and cuDNN builds and its thread count.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pomlia_hpc

#: The distributions whose version can change a result (pixels decoded, weights initialised,
#: kernels run, configurations sampled, vectors searched); those not installed are left out.
PACKAGES: tuple[str, ...] = (
    "torch",
    "torchvision",
    "numpy",
    "deepspeed",
    "smac",
    "ConfigSpace",
    "faiss-cpu",
    "faiss-gpu",
    "scikit-learn",
    "scipy",
    "zarr",
    "pillow",
    "onnxruntime",
)


def code_version(root: Path | None = None) -> dict[str, str]:
    """The package version and, when ``root`` (the folder that holds the ``pomlia_hpc``
    package; default: this one's) is the top of a git checkout, its commit (``-dirty`` with
    local edits). An installed package (``site-packages``) has no commit, also when the
    environment lies inside another project's checkout, whose commit is not pomlia's."""
    out = {"version": pomlia_hpc.__version__}
    root = (root or Path(pomlia_hpc.__file__).parent.parent).resolve()
    try:
        found = _git(root, "rev-parse", "--show-toplevel", "--short=12", "HEAD")
        lines = found.stdout.splitlines() if found.returncode == 0 else []
        if len(lines) == 2 and Path(lines[0]).resolve() == root:
            dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "pomlia_hpc")
            out["commit"] = lines[1] + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``git -C root ARGS`` (at most 10 s), its output captured."""
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
    )


def package_versions() -> dict[str, str]:
    """``{distribution: version}`` of the :data:`PACKAGES` installed here."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def software() -> dict[str, Any]:
    """What this process computes with: ``python``, ``platform`` (machine and OS),
    ``pomlia`` (:func:`code_version`), ``packages`` (:func:`package_versions`) and, where
    torch is already imported, ``torch_build`` (``cuda``, ``cudnn``: None on a CPU build;
    ``threads``: intra-op threads, whose count changes how CPU kernels sum)."""
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}",
        "pomlia": code_version(),
        "packages": package_versions(),
    }
    torch = sys.modules.get("torch")  # never imported here: see the module docstring
    if torch is not None and hasattr(torch, "get_num_threads"):
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        out["torch_build"] = {
            "cuda": torch.version.cuda,
            "cudnn": cudnn,
            "threads": torch.get_num_threads(),
        }
    return out
