"""``pomlia fingerprint refresh``: retrain the encoder when there are dataset versions it was
not trained on (added since, or left out of its training).

The paper (§3.2) retrains the embedding periodically, so new data shapes the similarity space.
The *current* encoder is named in ``<home>/indexes/current-encoder.json`` (commands that take
``--encoder`` use it when none is given). A refresh:

1. compares the content hash of the current version (what the plain name means) of every
   registered dataset with those the current encoder was trained on; every one it was not
   trained on counts, whether added after its training or left out of it (it was only
   embedded); none → nothing to do (the same images registered under another name count as
   trained on);
2. trains ``<root>-r<k>`` (same settings, ``epochs`` may be overridden; ``<root>`` the encoder
   the chain of refreshes started from, ``k`` one above any name of that form) on all of
   them, each content once (a copy under another name would count its images twice), as the
   usual resumable cluster job, and records it as a refresh of the base encoder
   (:mod:`pomlia_hpc.fingerprint.lineage`: which encoder is a refresh of which is read from
   that record, not from the name);
3. embeds every one of them (copies too) with it and builds its FAISS index;
4. only then switches the pointer (written atomically). Until step 4 similarity and the index
   keep using the previous encoder; a refresh killed midway resumes the same ``<root>-r<k>``
   (its training record and complete shards are reused) when run again.

An encoder under refresh is marked (``<home>/indexes/refreshing/<name>.json``) from before
its training starts until the switch: it is never the default encoder of the commands that
take ``--encoder`` (:func:`default_encoder`), so while a refresh runs, and after one was
interrupted, the encoder being refreshed stays the default.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.data.store import current_versions
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.fingerprint.current import (
    default_encoder,
    pointer_path,
    refresh_marker,
)
from pomlia_hpc.fingerprint.extract import extract
from pomlia_hpc.fingerprint.index import build_index
from pomlia_hpc.fingerprint.lineage import refresh_number, refresh_roots
from pomlia_hpc.fingerprint.train import TrainConfig, get_encoder, train_encoder
from pomlia_hpc.registry import DatasetVersion, Encoder, Registry
from pomlia_hpc.workspace import Workspace

#: ``report(description, unit)``: a context around one step that yields its progress
#: callback ``(done, total)``, or None for none.
Phase = Callable[[str, str], AbstractContextManager[Callable[[int, int], None] | None]]


def _write_pointer(workspace: Workspace, data: dict[str, Any]) -> None:
    write_json_atomic(pointer_path(workspace), data)


@dataclass(frozen=True)
class RefreshPlan:
    """What a refresh would do: the base encoder, the versions to train on (one per content
    hash), which of them the base was not trained on (``new``: added since its training or
    left out of it), and the versions whose content another one of ``datasets``
    has (``copies``: embedded, not trained on)."""

    base: str
    name: str
    datasets: list[str]
    new: list[str]
    copies: list[str] = field(default_factory=list)

    @property
    def embed(self) -> list[str]:
        """Every version the refresh embeds: those trained on and their copies."""
        return self.datasets + self.copies

    @property
    def needed(self) -> bool:
        return bool(self.new)


def plan_refresh(registry: Registry, workspace: Workspace, base: str | None = None) -> RefreshPlan:
    """Which encoder to refresh (``base``, else the current one, else the only one) and on
    what; ``new`` is empty when the base already covers every current version."""
    enc = get_encoder(registry, base if base is not None else default_encoder(registry, workspace))
    versions = current_versions(registry)
    covered = set(enc.dataset_version_ids or [])
    trained = _contents(registry, covered)
    # One version per content hash (version ids are content hashes): the one trained on before,
    # else the first by name. A copy under another name is embedded but neither new nor
    # trained on twice.
    by_content: dict[str, str] = {}
    for name, v in sorted(versions.items(), key=lambda nv: (nv[1].id not in covered, nv[0])):
        by_content.setdefault(v.version, name)
    keep = sorted(by_content.values())
    refs = {name: f"{name}@{versions[name].version}" for name in keep}
    copies = [f"{n}@{v.version}" for n, v in sorted(versions.items()) if n not in refs]
    new = [refs[n] for n in keep if versions[n].version not in trained]
    wanted = {versions[n].version for n in keep}
    with registry.session() as s:
        encoders = list(s.scalars(select(Encoder).order_by(Encoder.id)))
        s.expunge_all()
    roots = refresh_roots(encoders)  # by the lineage records (the name only for older rows)
    root = roots[enc.name]
    for other in encoders:
        # A refresh of this family that trained its encoder but did not finish (no switch):
        # finish that one. An encoder merely named like one (by hand) is none.
        # Contents are compared, not version ids: the other may have been trained on copies
        # too (an earlier release did not fold them), which adds ids but no content.
        if (
            other.name not in (enc.name, root)
            and roots[other.name] == root
            and _contents(registry, other.dataset_version_ids) == wanted
        ):
            return RefreshPlan(enc.name, other.name, list(refs.values()), new, copies)
    # The next free number: a name taken by hand is skipped, not reused.
    k = 1 + max((n for e in encoders if (n := refresh_number(root, e.name))), default=0)
    return RefreshPlan(enc.name, f"{root}-r{k}", list(refs.values()), new, copies)


def _contents(registry: Registry, version_ids: Any) -> set[str]:
    """The content hashes of the dataset versions with these ids."""
    ids = set(version_ids or [])
    with registry.session() as s:
        return set(s.scalars(select(DatasetVersion.version).where(DatasetVersion.id.in_(ids))))


def refresh(
    registry: Registry,
    workspace: Workspace,
    base: str | None = None,
    *,
    epochs: int | None = None,
    shards: int = 1,
    say: Callable[[str], None] = print,
    report: Phase | None = None,
) -> RefreshPlan:
    """Run the refresh of the module docstring; returns its plan (``needed`` False: no-op).

    ``say`` gets the step lines and the extraction's warnings. ``report(description, unit)``,
    if given, is entered around each step and yields its progress callback: training
    (``epochs``: epochs done, epochs), extraction (``array tasks``: done, tasks) and the
    index (``vectors``: added, vectors), as ``fingerprint train``, ``fingerprint extract``
    and ``index build`` report them."""
    phase: Phase = report or (lambda _description, _unit: nullcontext(None))
    plan = plan_refresh(registry, workspace, base)
    if not plan.needed:
        say(f"encoder {plan.base} covers the current version of every dataset: nothing to do")
        return plan
    enc = get_encoder(registry, plan.base)
    config = TrainConfig.model_validate(enc.config)
    if epochs is not None:
        config = config.model_copy(update={"epochs": epochs})
    # Marked before its training can register it: until the switch it is not the default.
    write_json_atomic(refresh_marker(workspace, plan.name), {"base": plan.base})
    if _trained(registry, plan.name):
        # An interrupted refresh trained it (on these contents, see plan_refresh): its
        # record may list other names for them, which train_encoder would refuse.
        say(f"{plan.name} is trained already: finishing its refresh")
    else:
        say(f"training {plan.name} on {len(plan.datasets)} versions ({len(plan.new)} new)")
        if plan.copies:
            say(f"same content as a version trained on, embedded only: {', '.join(plan.copies)}")
        with phase(f"training '{plan.name}'", "epochs") as bar:
            # The lineage is recorded with the row, so nothing reads it back from the name.
            train_encoder(
                registry,
                workspace,
                plan.name,
                plan.datasets,
                config,
                progress=bar,
                refresh_of=enc.id,
            )
    say(f"embedding {len(plan.embed)} versions with {plan.name}")
    with phase("extracting", "array tasks") as bar:
        extract(
            registry,
            workspace,
            plan.name,
            plan.embed,
            shards=shards,
            progress=bar,
            say=lambda line: say(f"warning: {line}"),
        )
    say(f"building the index of {plan.name}")
    with phase("adding vectors", "vectors") as bar:
        built = build_index(registry, workspace, plan.name, progress=bar)
    _write_pointer(
        workspace,
        {
            "encoder": plan.name,
            "previous": plan.base,
            "datasets": plan.embed,
            "index": str(built.path),
            "switched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    refresh_marker(workspace, plan.name).unlink(missing_ok=True)  # current now
    say(f"current encoder: {plan.name} (was {plan.base}); index {built.path}")
    return plan


def _trained(registry: Registry, name: str) -> bool:
    """Whether encoder ``name`` is registered with its weights on disk."""
    with registry.session() as s:
        path = s.scalar(select(Encoder.checkpoint_path).where(Encoder.name == name))
    return bool(path) and Path(str(path)).is_file()
