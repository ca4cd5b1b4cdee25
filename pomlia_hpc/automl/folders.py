"""Where a study lives in the workspace: ``runs/<name>/``, with its saved specification.

Apart from :mod:`pomlia_hpc.automl.study` (which imports the trainer, and so torch) so that
registry queries such as ``pomlia runs list`` can tell a created study without importing it.
"""

from __future__ import annotations

import re
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


def owning_pipeline(workspace: Workspace, name: str) -> str | None:
    """The pipeline whose automl stage made study ``name`` (named ``<pipeline>-<task>-<key>``,
    the key 8 hex digits, with ``<home>/pipelines/<pipeline>/`` present), else None: such a
    study is resumed by running its pipeline again, not by ``automl run --resume``."""
    root = workspace.path("pipelines")
    head, _, key = name.rpartition("-")
    if not head or not re.fullmatch(r"[0-9a-f]{8}", key) or not root.is_dir():
        return None
    owners = [p.name for p in root.iterdir() if p.is_dir() and head.startswith(p.name + "-")]
    return max(owners, key=len) if owners else None
