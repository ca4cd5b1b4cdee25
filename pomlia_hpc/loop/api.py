"""``pomlia loop run SLOT``: one pass of the loop for a deployment slot (see :mod:`.stages`).

The run's parameters are fixed when it is created: the champion, the harvest window (from the
end of the window that built the champion's training data, or ``since``, to now) and the
settings. A second call while a run of the slot is unfinished resumes that run (its settings,
not the new ones); ``new=True`` starts another. A run of a retrain request resumed by hand
(``loop run SLOT``) takes that request and records how it ended, as the watcher does: left
``open``, the next watcher would retrain for it again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pomlia_hpc.loop import requests
from pomlia_hpc.loop.claim import check_free
from pomlia_hpc.loop.driver import LoopResult, Progress, Stage, open_run, run_stages
from pomlia_hpc.loop.harvest import default_since, training_version
from pomlia_hpc.loop.promote import champion, slots
from pomlia_hpc.loop.stages import STAGES, LoopSettings, check_settings
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import Registry
from pomlia_hpc.registry.lookup import not_found
from pomlia_hpc.workspace import Workspace


def run_loop(
    registry: Registry,
    workspace: Workspace,
    slot: str,
    settings: LoopSettings | None = None,
    *,
    since: datetime | None = None,
    trigger: str = "manual",
    request_id: int | None = None,
    report_id: int | None = None,
    new: bool = False,
    stages: tuple[Stage, ...] = STAGES,
    progress: Progress = print,
) -> LoopResult:
    """Create (or resume) the slot's loop run and run its unfinished stages. ``settings`` are
    checked first: settings no run could finish with record nothing."""
    settings = settings or LoopSettings()
    check_settings(settings)
    entry = champion(registry, slot)
    if entry is None:  # never promoted to (a typo, or a new slot): exit 4, as `loop show`
        raise not_found("slot", slot, slots(registry))
    model = resolve_model(registry, str(entry.model_id))
    parent, _ = training_version(registry, model)
    start = since or default_since(parent)
    params = {
        "champion_id": model.id,
        "champion": model.name,
        "since": start.isoformat() if start else None,
        "until": datetime.now(UTC).isoformat(),
        "settings": settings.to_dict(),
    }
    run_id, resumed = open_run(
        registry,
        slot,
        champion_id=model.id,
        params=params,
        trigger=trigger,
        request_id=request_id,
        report_id=report_id,
        new=new,
    )
    adopted = None
    if resumed:
        check_free(workspace, slot, run_id)  # held by another live driver: say so, not "resuming"
        progress(f"resuming loop run {run_id} of slot {slot} (its own settings and window)")
        if request_id is None:  # by hand: the watcher, which passes its request, settles it
            adopted = requests.adopt(registry, run_id)
    try:
        result = run_stages(registry, workspace, run_id, stages, progress=progress)
    except BaseException as exc:
        if adopted is not None and not isinstance(exc, Exception):  # a stop: resumable
            requests.release(registry, adopted)
        raise
    if adopted is not None:
        requests.settle(registry, adopted, result)
    return result
