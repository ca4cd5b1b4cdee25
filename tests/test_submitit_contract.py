"""The local backend starts submitit's job controller through our own entry point
(:mod:`pomlia_hpc.cluster.submitit_controller`), with the environment submitit's controller
reads. If an upgrade of submitit changes that environment or the controller's module, this
test fails before a local job does."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import submitit.local.local as submitit_local

from pomlia_hpc.cluster import submitit_controller


def _function_source(path: Path, name: str) -> str:
    text = path.read_text()
    start = text.index(f"def {name}(")
    end = re.compile(r"\n(?:def |class |@)").search(text, start + 1)
    return text[start : end.start() if end else len(text)]


def test_our_controller_start_sets_what_submitits_sets() -> None:
    theirs = _function_source(Path(inspect.getfile(submitit_local)), "start_controller")
    ours = _function_source(Path(inspect.getfile(submitit_controller)), "start_controller")
    names = re.compile(r"\b((?:SUBMITIT_\w+|CUDA_VISIBLE_DEVICES))=")
    assert set(names.findall(theirs)) == set(names.findall(ours))
    assert '"submitit.local._local"' in theirs  # the module ours stands in for
    ours_sig = inspect.signature(submitit_controller.start_controller)
    params = [p for p in ours_sig.parameters]
    assert all(f"{p}" in theirs.split(")", 1)[0] for p in params)
