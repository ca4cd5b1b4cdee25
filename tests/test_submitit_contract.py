"""The local backend starts submitit's job controller through our own entry point
(:mod:`pomlia_hpc.cluster.submitit_controller`), with the environment submitit's controller
reads. If an upgrade of submitit changes that environment or the controller's module, this
test fails before a local job does."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
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


def test_our_local_executor_submits_as_submitits_does() -> None:
    """:class:`ControlledLocalExecutor` copies submitit's ``_submit_command`` to start our
    controller for pomlia's executors only: the arguments it hands the controller and the
    job it makes are submitit's."""
    name = "_submit_command"  # submitit's method, replaced in our subclass
    theirs = _calls(vars(submitit_local.LocalExecutor)[name])
    ours = _calls(vars(submitit_controller.ControlledLocalExecutor)[name])
    assert {"start_controller", "LocalJob", "ntasks", "gpus"} <= set(theirs)
    assert ours == theirs


def _calls(method: object) -> dict[str, str]:
    """The calls of ``start_controller`` and ``LocalJob`` in ``method``'s source, as ASTs,
    and the values of the names assigned (the process is the controller's call)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(method)))  # type: ignore[arg-type]
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("start_controller", "LocalJob"):
                out[node.func.id] = ast.dump(node)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.dump(node.value)
    return out
