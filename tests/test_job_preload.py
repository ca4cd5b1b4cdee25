"""A checkpointable job imports its lazily-used modules when it is unpickled on the node.

That is before submitit installs its USR2 handler: a preemption signal landing inside a C
extension's import (matplotlib's ft2font, say) turns the handler's ``SystemExit`` into
``ImportError: initialization failed``, and the job fails instead of requeueing.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

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
