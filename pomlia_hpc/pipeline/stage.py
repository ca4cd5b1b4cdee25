"""What a stage is, what it remembers, and how it is skipped when its inputs are unchanged.

A stage reads the spec section it owns and the *outputs* of the stages it needs, and returns
its own outputs as JSON (dataset versions, an encoder checkpoint digest, a study's best model).
Its **key** is a hash of exactly those inputs (plus, for stages that read files outside the
workspace, the size and modification time of those files). A stage whose record says ``done``
with the same key, and whose outputs are still there, is skipped; any other stage runs. Since
a key depends on the upstream stages' outputs rather than on their keys, a data stage that is
re-run and produces the same dataset versions (they are content hashes) leaves everything
downstream skipped.

Records live in ``<home>/pipelines/<name>/stages/<stage>.json`` and are replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pomlia_hpc.cluster.records import record_own_failure
from pomlia_hpc.cluster.terminate import stop_cause, stop_kind, submitted_jobs
from pomlia_hpc.config import ClusterProfile
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.pipeline.spec import PipelineSpec, Resources
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

#: Bump when a stage's outputs change meaning, so older records do not count as done.
RECORD_FORMAT = 1


class StageFailedError(PomliaError):
    """A stage ran and cannot deliver its outputs for a reason in the work itself, not a bug
    (every trial of its study crashed): recorded failed, said in one line; exit 1, as a
    failed stage of ``pipeline run --wait`` ends."""

    exit_code = 1


def pipeline_dir(workspace: Workspace, name: str) -> Path:
    """``<home>/pipelines/<name>``: the spec snapshot, stage records and run file."""
    return workspace.path("pipelines", name)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def content_key(data: Any) -> str:
    """sha256 of the canonical JSON of ``data`` (hex, 64 characters)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # a spec section
        return value.model_dump(mode="json")
    return str(value)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class StageContext:
    """Everything a running stage needs."""

    spec: PipelineSpec
    workspace: Workspace
    registry: Registry
    log: Callable[[str], None] = print
    #: The running stage's content key (set by :func:`run_stage`).
    key: str = ""
    #: The running stage's record from before this run, which :func:`run_stage` overwrites
    #: first (None: it never ran); e.g. what it made last time.
    previous: dict[str, Any] | None = None

    @property
    def folder(self) -> Path:
        return pipeline_dir(self.workspace, self.spec.name)

    def progress(self, what: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback that logs ``what done/total`` when it changes
        (long work prints progress also into a Slurm output file)."""
        last: list[tuple[int, int]] = []

        def report(done: int, total: int) -> None:
            if not last or last[0] != (done, total):
                last[:] = [(done, total)]
                self.log(f"  {what} {done}/{total}")

        return report

    def record_path(self, stage: str) -> Path:
        return self.folder / "stages" / f"{stage}.json"

    def record(self, stage: str) -> dict[str, Any] | None:
        return read_json(self.record_path(stage))

    def outputs(self, stage: str) -> dict[str, Any]:
        """The outputs of a finished upstream stage (a stage runs only after its needs)."""
        rec = self.record(stage)
        if rec is None or rec.get("status") != "done":
            raise RuntimeError(f"stage '{stage}' has not finished; it must run first")
        return dict(rec["outputs"])


@dataclass(frozen=True)
class PlannedJob:
    """One job (or array) a stage submits, with an estimate of its length. ``count`` is
    exact unless ``bound`` says it is not (``"up to"``, ``"about"``): how many an array job
    has can depend on sizes known only after ingest."""

    what: str
    count: int
    resources: ClusterProfile
    hours: float | None = None  # wall hours of one job (estimate)
    bound: str = ""

    @property
    def count_words(self) -> str:
        """``count``, as the plan shows it (``up to 2``)."""
        return f"{self.bound} {self.count}" if self.bound else str(self.count)

    @property
    def gpu_hours(self) -> float:
        if self.hours is None:
            return 0.0
        return self.hours * self.count * self.resources.gpus_per_node


@dataclass(frozen=True)
class Stage:
    """A step of the pipeline. ``enabled(spec)`` says whether the file asks for it;
    ``section(spec)`` is the part of the file that keys it; ``external(spec)`` identifies
    files outside the workspace it reads; ``run`` does the work and returns the outputs;
    ``still_there`` checks that recorded outputs were not deleted since; ``jobs`` lists the
    jobs it will submit (for ``--dry-run``); ``check`` refuses inputs the stage would refuse,
    cheaply and before anything runs (so ``--dry-run`` finds them too); ``check_upstream``
    likewise, given the recorded outputs of the needed stages that will be skipped (by stage
    name; what the stage will read from them), for checks that depend on them;
    ``check_workspace`` likewise, for checks that read the workspace (its registry)."""

    name: str
    needs: tuple[str, ...]
    summary: str
    enabled: Callable[[PipelineSpec], bool]
    section: Callable[[PipelineSpec], Any]
    run: Callable[[StageContext], dict[str, Any]]
    jobs: Callable[[PipelineSpec, ClusterProfile], list[PlannedJob]] = lambda _s, _p: []
    still_there: Callable[[StageContext, dict[str, Any]], bool] = lambda _c, _o: True
    external: Callable[[PipelineSpec], Any] = lambda _s: None
    check: Callable[[PipelineSpec], None] = lambda _s: None
    check_upstream: Callable[[PipelineSpec, dict[str, dict[str, Any]]], None] = lambda _s, _u: None
    check_workspace: Callable[[StageContext], None] = lambda _c: None
    tags: tuple[str, ...] = field(default=())


def section_stage(
    name: str,
    *,
    needs: tuple[str, ...],
    summary: str,
    run: Callable[[StageContext], dict[str, Any]],
    key: str | None = None,
    when: str | None = None,
    **more: Any,
) -> Stage:
    """A stage keyed by the pipeline file's section ``key`` (default: ``name``): it runs when
    section ``when`` (default: ``key``) is in the file and not ``enabled: false``. ``more``:
    the other :class:`Stage` fields (``jobs``, ``still_there``, ...)."""
    key = key or name
    when = when or key

    def enabled(spec: PipelineSpec) -> bool:
        section = getattr(spec, when)
        return section is not None and bool(getattr(section, "enabled", True))

    return Stage(
        name=name,
        needs=needs,
        summary=summary,
        enabled=enabled,
        section=lambda spec: getattr(spec, key),
        run=run,
        **more,
    )


def resources_of(profile: ClusterProfile, res: Resources | None) -> ClusterProfile:
    """``profile`` with a section's resource overrides applied."""
    from pomlia_hpc.cluster.resources import with_overrides

    return with_overrides(profile, res.as_overrides() if res is not None else None)


def _key_inputs(ctx: StageContext, stage: Stage) -> dict[str, Any] | None:
    """What keys the stage: its part of the file, the outside files it reads, and the outputs
    of the stages it needs; None when one of those has not finished yet."""
    upstream: dict[str, Any] = {}
    for need in stage.needs:
        rec = ctx.record(need)
        if rec is None or rec.get("status") != "done":
            return None
        upstream[need] = rec["outputs"]
    return {
        "format": RECORD_FORMAT,
        "stage": stage.name,
        "section": stage.section(ctx.spec),
        "external": stage.external(ctx.spec),
        "upstream": upstream,
    }


def stage_key(ctx: StageContext, stage: Stage) -> str | None:
    """The stage's content key, or None when an upstream stage has no finished outputs yet."""
    inputs = _key_inputs(ctx, stage)
    return None if inputs is None else content_key(inputs)


def _input_keys(inputs: dict[str, Any]) -> dict[str, Any]:
    """A key per input of the stage (kept in its record), so the next run can say which one
    changed."""
    return {
        "section": content_key(inputs["section"]),
        "external": content_key(inputs["external"]),
        "upstream": {n: content_key(v) for n, v in inputs["upstream"].items()},
    }


def run_reason(ctx: StageContext, stage: Stage) -> str | None:
    """Why ``stage`` runs again, in words; None for its first run. Call it before the stage
    runs (it compares the last record with the inputs now)."""
    rec = ctx.record(stage.name)
    if rec is None:
        return None
    if rec.get("status") == "failed":
        return "its last run failed"
    if rec.get("status") == "cancelled":
        return "its last run was cancelled"
    if rec.get("status") == "requeued":
        return "Slurm requeued it"
    if rec.get("status") != "done":
        return "its last run did not finish"
    inputs = _key_inputs(ctx, stage)
    if inputs is None or rec.get("key") == content_key(inputs):
        return "its recorded outputs are gone"
    old, new = rec.get("inputs") or {}, _input_keys(inputs)
    if not old:  # a record of an older pomlia: the key alone, not what went into it
        return "the pipeline file, an input file or an upstream stage's outputs changed"
    changed = []
    if old.get("section") != new["section"]:
        changed.append(f"its part of the pipeline file ('{stage.name}') changed")
    if old.get("external") != new["external"]:
        changed.append("an input file outside the workspace changed")
    ups = [n for n in new["upstream"] if (old.get("upstream") or {}).get(n) != new["upstream"][n]]
    if ups:
        changed.append(f"the outputs of {', '.join(ups)} changed")
    return "; ".join(changed) or "pomlia's record format changed"


def is_fresh(ctx: StageContext, stage: Stage) -> bool:
    """Whether ``stage`` finished before with the same key and its outputs still exist."""
    key = stage_key(ctx, stage)
    rec = ctx.record(stage.name)
    if key is None or rec is None or rec.get("status") != "done" or rec.get("key") != key:
        return False
    return stage.still_there(ctx, rec.get("outputs", {}))


def run_stage(ctx: StageContext, stage: Stage, *, job_id: int | None = None) -> str:
    """Run ``stage`` unless it is fresh; record the outcome. Returns ``skipped`` or ``done``;
    a failure is recorded (with its error) and raised."""
    if is_fresh(ctx, stage):
        ctx.log(f"[{stage.name}] skipped: outputs exist for the same inputs")
        return "skipped"
    inputs = _key_inputs(ctx, stage)
    if inputs is None:
        raise RuntimeError(f"stage '{stage.name}' cannot start: {', '.join(stage.needs)} first")
    key = content_key(inputs)
    reason = run_reason(ctx, stage)
    path = ctx.record_path(stage.name)
    started = now()
    base: dict[str, Any] = {
        "stage": stage.name,
        "key": key,
        "inputs": _input_keys(inputs),
        "started_at": started,
        "job": job_id,
    }
    ctx.previous = ctx.record(stage.name)
    write_json_atomic(path, {**base, "status": "running", "outputs": {}}, sort_keys=True)
    if reason is None:
        ctx.log(f"[{stage.name}] running: {stage.summary}")
    elif (ctx.previous or {}).get("status") == "requeued":
        ctx.log(f"[{stage.name}] resumed after a requeue: {stage.summary}")
    else:
        ctx.log(f"[{stage.name}] running again, since {reason}: {stage.summary}")
    ctx.key = key
    mark = len(submitted_jobs())
    try:
        outputs = stage.run(ctx)
    except BaseException as exc:
        # A cancellation is the cause, not what it surfaced as (an empty KeyboardInterrupt, a
        # DataLoader worker killed by the same SIGTERM).
        error = stop_cause(exc) or str(exc) or type(exc).__name__
        # A cancellation or a requeue is no failure: `pipeline status` and the next run say
        # which it was (a requeued stage job runs again and resumes by itself).
        status = {"cancelled": "cancelled", "requeued": "requeued"}.get(stop_kind(exc) or "")
        # The jobs it submitted (a training stopped by Ctrl-C): `pipeline status` shows them.
        base["jobs"] = submitted_jobs()[mark:]
        if job_id is not None and status is None:
            # Slurm knows only the exit code of the stage job: its row (`jobs list/show`) gets
            # the stage's own cause and traceback, as `pipeline status` shows them.
            record_own_failure(ctx.registry, job_id, error, traceback.format_exc())
        write_json_atomic(
            path,
            {
                **base,
                "status": status or "failed",
                "outputs": {},
                "ended_at": now(),
                "error": error,
            },
            sort_keys=True,
        )
        if status == "requeued":
            ctx.log(f"[{stage.name}] requeued, will resume when Slurm starts its job again")
        elif status == "cancelled" and error.startswith("cancelled"):
            ctx.log(f"[{stage.name}] {error}")  # "cancelled (SIGTERM: ...)"
        else:
            ctx.log(f"[{stage.name}] {status or 'failed'}: {error}")
        raise
    base["jobs"] = submitted_jobs()[mark:]
    write_json_atomic(
        path, {**base, "status": "done", "outputs": outputs, "ended_at": now()}, sort_keys=True
    )
    ctx.log(f"[{stage.name}] done")
    return "done"
