"""Where a study lives in the workspace: ``runs/<name>/``, with its saved specification.

Apart from :mod:`pomlia_hpc.automl.study` (which imports the trainer, and so torch) so that
registry queries such as ``pomlia runs list`` can tell a created study without importing it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pomlia_hpc.workspace import Workspace

#: A study's saved specification, in its folder.
SPEC_FILE = "study.json"
#: What a study's driver writes when the study has finished (its outcome), in its folder.
SUMMARY_FILE = "summary.json"


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


def study_finished(workspace: Workspace, name: str) -> bool:
    """Whether study ``name`` finished: its driver wrote ``summary.json`` after registering
    the best model (or finding none). A study stopped before (interrupted, its driver killed or
    hung up) has none, whatever its runs say."""
    return (study_dir(workspace, name) / SUMMARY_FILE).is_file()


def owning_pipeline(workspace: Workspace, name: str) -> str | None:
    """The pipeline whose automl stage made study ``name``, else None: such a study is resumed
    by running its pipeline again, not by ``automl run --resume``.

    The owner is what the study's ``study.json`` records (its ``pipeline`` key, written when
    the study is created; null for a study of ``automl run`` or the loop). Only a study whose
    ``study.json`` has no such key (made before pomlia recorded owners, or without a readable
    specification) is guessed from its name: ``<pipeline>-<task>-<key>``, the key 8 hex
    digits, with ``<home>/pipelines/<pipeline>/`` present. A guess, since a user's own study
    may be named like that; recorded owners never are guessed."""
    recorded, owner = _recorded_owner(study_dir(workspace, name) / SPEC_FILE)
    # Studies made before owners were recorded have no key: only for them the name guesses.
    return owner if recorded else _owner_by_name(workspace, name)


def _recorded_owner(spec_file: Path) -> tuple[bool, str | None]:
    """(whether ``spec_file`` records an owner, the pipeline it names or None), read as plain
    JSON (no import of the study room); a missing or unreadable file records none."""
    try:
        data = json.loads(spec_file.read_bytes())
    except (OSError, ValueError):
        return False, None
    if not isinstance(data, dict) or "pipeline" not in data:
        return False, None
    owner = data["pipeline"]
    return True, owner if isinstance(owner, str) and owner else None


def _owner_by_name(workspace: Workspace, name: str) -> str | None:
    """The legacy guess for a study made before owners were recorded (see
    :func:`owning_pipeline`): the longest pipeline name that ``name`` starts with."""
    root = workspace.path("pipelines")
    head, _, key = name.rpartition("-")
    if not head or not re.fullmatch(r"[0-9a-f]{8}", key) or not root.is_dir():
        return None
    owners = [p.name for p in root.iterdir() if p.is_dir() and head.startswith(p.name + "-")]
    return max(owners, key=len) if owners else None
