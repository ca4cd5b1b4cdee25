"""Where a study lives in the workspace: ``runs/<name>/``, with its saved specification.

Apart from :mod:`pomlia_hpc.automl.study` (which imports the trainer, and so torch) so that
registry queries such as ``pomlia runs list`` can tell a created study without importing it.
"""

from __future__ import annotations

from pathlib import Path

from pomlia_hpc.workspace import Workspace

#: A study's saved specification, in its folder.
SPEC_FILE = "study.json"


def study_dir(workspace: Workspace, name: str) -> Path:
    """The folder of study ``name`` (its specification, SMAC's state, trial logs)."""
    return workspace.path("runs", name)


def spec_files(workspace: Workspace) -> list[Path]:
    """The saved specifications of the studies created in this workspace, sorted."""
    root = workspace.path("runs")
    return sorted(root.glob(f"*/{SPEC_FILE}")) if root.is_dir() else []


def study_names(workspace: Workspace) -> list[str]:
    """The studies created in this workspace (a folder with a saved specification), sorted."""
    return [p.parent.name for p in spec_files(workspace)]
