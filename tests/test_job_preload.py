"""A checkpointable job imports its lazily-used modules when it is unpickled on the node.

That is before submitit installs its USR2 handler: a preemption signal landing inside a C
extension's import (matplotlib's ft2font, say) turns the handler's ``SystemExit`` into
``ImportError: initialization failed``, and the job fails instead of requeueing.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

from pomlia_hpc.automl.trial import TrialJob
from pomlia_hpc.cluster import Checkpointable
from pomlia_hpc.fingerprint.train import TrainJob

CHECK = """
import pickle, sys
preload = {preload!r}
assert not any(m in sys.modules for m in preload), "imported before unpickling"
pickle.load(open(sys.argv[1], "rb"))
missing = [m for m in preload if m not in sys.modules]
assert not missing, f"not imported on unpickling: {{missing}}"
"""


@pytest.mark.parametrize("cls", [TrainJob, TrialJob])
def test_unpickling_a_job_imports_its_preload(tmp_path: Path, cls: type[Checkpointable]) -> None:
    assert cls.preload, f"{cls.__name__} preloads nothing"
    # A bare instance is enough: unpickling restores __dict__ through __setstate__.
    job = cls.__new__(cls)
    job.__dict__["out_dir"] = str(tmp_path)
    path = tmp_path / "job.pkl"
    path.write_bytes(pickle.dumps(job))
    code = CHECK.format(preload=cls.preload)
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


#: What each job imports while it runs (after submitit's handler is installed): the event
#: writer at training's set-up, and for the encoder the loss-curve PNG at each epoch's end.
RUNTIME = """
import json, pickle, sys, tempfile
from pathlib import Path
pickle.load(open(sys.argv[1], "rb"))

def extensions():
    return {{n for n, m in list(sys.modules.items())
             if str(getattr(m, "__file__", "") or "").endswith(".so")}}

before = extensions()
from pomlia_hpc.curves import Curves
Curves(Path(tempfile.mkdtemp())).close()
if {curves!r}:
    from pomlia_hpc.fingerprint.validation import write_curves
    write_curves(Path(tempfile.mkdtemp()), {{"train": [1.0, 0.5], "objective": "mse"}})
print(json.dumps(sorted(extensions() - before)))
"""


@pytest.mark.parametrize("cls", [TrainJob, TrialJob])
def test_a_running_job_imports_no_c_extension_its_preload_left_out(
    tmp_path: Path, cls: type[Checkpointable]
) -> None:
    """The C extensions a job loads while it runs are where a preemption signal can turn into
    an ImportError: the event writer's (protobuf) and the Agg backend's, which the loss-curve
    PNG needs and matplotlib.pyplot alone does not import, come with the unpickling."""
    job = cls.__new__(cls)
    job.__dict__["out_dir"] = str(tmp_path)
    path = tmp_path / "job.pkl"
    path.write_bytes(pickle.dumps(job))
    code = RUNTIME.format(curves=cls is TrainJob)
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


class _Preloading(Checkpointable):
    """A job preloading the modules ``tmp_module`` writes (set per test)."""

    preload: ClassVar[tuple[str, ...]] = ()

    def __call__(self) -> None:
        return None


def tmp_module(folder: Path, name: str, body: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Module ``name`` with source ``body`` importable from ``folder``; returns its name."""
    (folder / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_a_module_failing_to_import_is_left_to_the_jobs_own_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Preloading only moves imports earlier: one that fails (a missing optional package, the
    event writer's protobuf mismatch raising TypeError) must fail, or be tolerated, where the
    job imports it, not while the job is unpickled (before it could record its failure)."""
    broken = tmp_module(tmp_path, "pomlia_broken_mod", "raise TypeError('mismatch')", monkeypatch)
    monkeypatch.setattr(_Preloading, "preload", ("pomlia_no_such_mod", broken))
    job = _Preloading()
    job.__dict__["step"] = 3
    assert pickle.loads(pickle.dumps(job)).__dict__ == {"step": 3}


def test_a_job_without_state_preloads_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = tmp_module(tmp_path, "pomlia_marker_mod", "", monkeypatch)
    monkeypatch.setattr(_Preloading, "preload", (name,))
    try:
        pickle.loads(pickle.dumps(_Preloading()))  # nothing on self: pickle skips a {} state
        assert name in sys.modules
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(("arch", "loads"), [("small_cnn", False), ("resnet18_imagenet", True)])
def test_a_trial_preloads_torchvision_for_the_architectures_that_build_with_it(
    tmp_path: Path, arch: str, loads: bool
) -> None:
    """torchvision's C extension is imported while a ResNet or MobileNet trial builds its
    network, after submitit's handler is installed, unless the unpickling loaded it; the small
    CNN's trials do without (seconds saved)."""
    job = TrialJob.__new__(TrialJob)
    job.__dict__["request"] = SimpleNamespace(config=SimpleNamespace(arch=arch))
    path = tmp_path / "job.pkl"
    path.write_bytes(pickle.dumps(job))
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))\n"
    code += "print('torchvision' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(loads)
