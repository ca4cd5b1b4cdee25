"""The files a pipeline's folder keeps about its last submission, and reading them back.

``spec.json`` (:data:`SPEC_SNAPSHOT`) is the pipeline file as validated when it was run or
submitted, so that stage jobs read what was submitted even if the file changes; ``run.json``
(:data:`RUN_FILE`, written by :mod:`pomlia_hpc.pipeline.runner`) names the mode, the profile,
the time of submission and each stage's action and job. The folder is
``<home>/pipelines/<name>/`` (:func:`pomlia_hpc.pipeline.stage.pipeline_dir`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pomlia_hpc.config import cluster_profile_ref
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.pipeline.spec import PipelineSpec, parse_pipeline
from pomlia_hpc.pipeline.stage import StageContext, content_key, read_json
from pomlia_hpc.workspace import Workspace

__all__ = [
    "RUN_FILE",
    "SPEC_SNAPSHOT",
    "known_pipelines",
    "load_snapshot",
    "run_job_ids",
    "same_submission",
    "snapshot_spec",
]

SPEC_SNAPSHOT = "spec.json"
RUN_FILE = "run.json"


def snapshot_spec(ctx: StageContext, data: dict[str, Any], source: str) -> Path:
    """Keep the file as validated, so stage jobs read what was submitted even if it changes."""
    path = ctx.folder / SPEC_SNAPSHOT
    write_json_atomic(
        path, {"data": data, "source": source, "base_dir": str(ctx.spec._base_dir)}, sort_keys=True
    )
    return path


def load_snapshot(path: Path) -> PipelineSpec:
    """The pipeline as :func:`snapshot_spec` kept it in ``path``."""
    snap = json.loads(path.read_text())
    return parse_pipeline(snap["data"], snap["source"], Path(snap["base_dir"]))


def run_job_ids(folder: Path) -> list[int]:
    """The registry ids of the stage (or driver) jobs of the pipeline's last submission."""
    run = read_json(folder / RUN_FILE) or {}
    ids = [int(v["job"]) for v in run.get("stages", {}).values() if v.get("job") is not None]
    return sorted(set(ids))


def same_submission(ctx: StageContext, data: dict[str, Any], profile_name: str) -> bool:
    """Whether the last submission ran this file's content (``data``, the YAML mapping) with
    the profile ``profile_name``: running the same command again re-attaches to it. Profiles
    are compared as :func:`profile_key` resolves them: a run recorded before the pipeline
    recorded absolute paths names ``./prof.yaml``."""
    run = read_json(ctx.folder / RUN_FILE) or {}
    snap = read_json(ctx.folder / SPEC_SNAPSHOT) or {}
    recorded = run.get("profile")
    same_profile = isinstance(recorded, str) and profile_key(recorded) == profile_key(profile_name)
    return same_profile and content_key(snap.get("data")) == content_key(data)


def profile_key(name_or_path: str) -> str:
    """The cluster profile ``name_or_path`` as two spellings of one file compare equal: a
    path to a YAML file resolved (``..``, links: ``../proj/prof.yaml`` run from ``proj``
    is ``./prof.yaml``), a profile name unchanged."""
    ref = cluster_profile_ref(name_or_path)
    return os.path.realpath(ref) if Path(ref).suffix in (".yaml", ".yml") else ref


def known_pipelines(workspace: Workspace) -> list[str]:
    """The names of the pipelines that have run in ``workspace`` (those with a snapshot)."""
    root = workspace.path("pipelines")
    return (
        sorted(p.name for p in root.iterdir() if (p / SPEC_SNAPSHOT).is_file())
        if root.is_dir()
        else []
    )
