"""The ordered list of stages, and the hook through which new stages plug in.

A stage module defines a :class:`~pomlia_hpc.pipeline.stage.Stage` and adds it with
:func:`register_stage` (``after=`` the stage it follows). A stage's ``needs`` may name stages
that a given file does not enable; :func:`active_stages` drops those, so ``data`` needs
``lookalikes`` only when the file generates look-alikes.
"""

from __future__ import annotations

from dataclasses import replace

from pomlia_hpc.errors import ConfigError
from pomlia_hpc.pipeline.spec import PipelineSpec
from pomlia_hpc.pipeline.stage import Stage
from pomlia_hpc.pipeline.stages_data import DATA, LOOKALIKES
from pomlia_hpc.pipeline.stages_fingerprint import ENCODER, EXTRACT, FIGURES, INDEX
from pomlia_hpc.pipeline.stages_learn import AUTOML, DEPLOY, EXPORT, TASKS

STAGES: list[Stage] = [LOOKALIKES, DATA, ENCODER, EXTRACT, INDEX, FIGURES, TASKS, AUTOML]
STAGES += [EXPORT, DEPLOY]

#: Sections of the file whose stage is provided by a room that may not be installed yet.
_PROVIDED_BY = {"recommend": "the strategy recommender", "monitor": "the monitor schedule"}


def register_stage(stage: Stage, *, after: str) -> None:
    """Insert ``stage`` after the stage named ``after`` (replacing one of the same name)."""
    names = [s.name for s in STAGES]
    if stage.name in names:
        STAGES[names.index(stage.name)] = stage
        return
    if after not in names:
        raise ValueError(f"no stage '{after}' to insert '{stage.name}' after")
    STAGES.insert(names.index(after) + 1, stage)


def active_stages(spec: PipelineSpec) -> list[Stage]:
    """The stages ``spec`` enables, in order, each with ``needs`` limited to enabled ones."""
    _load_plugins()
    names = {s.name for s in STAGES}
    for section, what in _PROVIDED_BY.items():
        if getattr(spec, section) is not None and section not in names:
            raise ConfigError(
                f"section '{section}' needs {what}, which this version of pomlia-hpc lacks; "
                f"remove the section"
            )
    on = [s for s in STAGES if s.enabled(spec)]
    enabled = {s.name for s in on}
    return [replace(s, needs=tuple(n for n in s.needs if n in enabled)) for s in on]


def stage_names() -> list[str]:
    _load_plugins()
    return [s.name for s in STAGES]


def _load_plugins() -> None:
    """Import the stage modules of rooms that register their own stages."""
    import importlib

    for module in ("pomlia_hpc.pipeline.stages_strategy", "pomlia_hpc.pipeline.stages_monitor"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
