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

#: A job unpickled in a fresh process: its preload imported by the unpickling (not before),
#: then what the job imports while it runs (after submitit's handler is installed): the event
#: writer at training's set-up, and for the encoder the loss-curve PNG at each epoch's end.
#: Prints the C extensions that running imported, whether the unpickling imported
#: torchvision, and whether unpickling the job in ``sys.argv[2]`` (when given, and torchvision
#: is not imported yet) then did.
CHECK = """
import json, pickle, sys, tempfile
from pathlib import Path
preload = {preload!r}
assert not any(m in sys.modules for m in preload), "imported before unpickling"
pickle.load(open(sys.argv[1], "rb"))
missing = [m for m in preload if m not in sys.modules]
assert not missing, f"not imported on unpickling: {{missing}}"
torchvision = "torchvision" in sys.modules

def extensions():
    return {{n for n, m in list(sys.modules.items())
             if str(getattr(m, "__file__", "") or "").endswith(".so")}}

before = extensions()
from pomlia_hpc.curves import Curves
Curves(Path(tempfile.mkdtemp())).close()
if {curves!r}:
    from pomlia_hpc.fingerprint.validation import write_curves
    write_curves(Path(tempfile.mkdtemp()), {{"train": [1.0, 0.5], "objective": "mse"}})
ran = sorted(extensions() - before)
then = None
if len(sys.argv) > 2:
    assert "torchvision" not in sys.modules, "torchvision imported by the run"
    pickle.load(open(sys.argv[2], "rb"))
    then = "torchvision" in sys.modules
print(json.dumps([ran, torchvision, then]))
"""


def _pickled(folder: Path, job: Checkpointable, name: str) -> str:
    """``job`` pickled to ``folder/name``; the file's path."""
    path = folder / name
    path.write_bytes(pickle.dumps(job))
    return str(path)


def _trial(arch: str) -> TrialJob:
    """A bare trial job of ``arch``: what its preload reads."""
    job = TrialJob.__new__(TrialJob)
    job.__dict__["request"] = SimpleNamespace(config=SimpleNamespace(arch=arch))
    return job


@pytest.mark.parametrize("cls", [TrainJob, TrialJob])
def test_a_job_imports_its_preload_on_unpickling_and_no_c_extension_it_left_out(
    tmp_path: Path, cls: type[Checkpointable]
) -> None:
    """The C extensions a job loads while it runs are where a preemption signal can turn into
    an ImportError: the event writer's (protobuf) and the Agg backend's, which the loss-curve
    PNG needs and matplotlib.pyplot alone does not import, come with the unpickling.

    torchvision's C extension is imported while a ResNet or MobileNet trial builds its
    network, after submitit's handler is installed, unless the unpickling loaded it; the small
    CNN's trials do without (seconds saved).

    One fresh process per class checks it all in turn (each process imports torch: ~5 s of
    CPU): the unpickling, the run, and for a trial, a small CNN's then a ResNet's."""
    assert cls.preload, f"{cls.__name__} preloads nothing"
    # A bare instance is enough: unpickling restores __dict__ through __setstate__.
    job = _trial("small_cnn") if cls is TrialJob else cls.__new__(cls)
    job.__dict__["out_dir"] = str(tmp_path)
    args = [_pickled(tmp_path, job, "job.pkl")]
    if cls is TrialJob:
        args.append(_pickled(tmp_path, _trial("resnet18_imagenet"), "resnet.pkl"))
    code = CHECK.format(preload=cls.preload, curves=cls is TrainJob)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    extensions, torchvision, then = json.loads(proc.stdout.strip().splitlines()[-1])
    assert extensions == []
    if cls is TrialJob:
        assert (torchvision, then) == (False, True)  # small CNN: without; ResNet: with


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
