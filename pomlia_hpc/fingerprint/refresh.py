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

import json
import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.data.store import current_versions
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.fingerprint.extract import extract
from pomlia_hpc.fingerprint.index import build_index
from pomlia_hpc.fingerprint.lineage import refresh_number, refresh_roots
from pomlia_hpc.fingerprint.train import TrainConfig, get_encoder, train_encoder
from pomlia_hpc.fingerprint.usable import fingerprint_sets, usable_sets
from pomlia_hpc.registry import Dataset, DatasetVersion, Encoder, Registry
from pomlia_hpc.workspace import Workspace

POINTER = "current-encoder.json"
#: ``report(description, unit)``: a context around one step that yields its progress
#: callback ``(done, total)``, or None for none.
Phase = Callable[[str, str], AbstractContextManager[Callable[[int, int], None] | None]]


def pointer_path(workspace: Workspace) -> Path:
    return workspace.path("indexes", POINTER)


def current_encoder(workspace: Workspace) -> str | None:
    """The encoder the pointer names, or None when no refresh has set one."""
    path = pointer_path(workspace)
    if not path.is_file():
        return None
    return str(json.loads(path.read_text())["encoder"])


def _refresh_marker(workspace: Workspace, name: str) -> Path:
    return workspace.path("indexes", "refreshing", f"{name}.json")


def under_refresh(workspace: Workspace) -> set[str]:
    """The encoders a refresh has started and not yet switched to (running or interrupted)."""
    folder = workspace.path("indexes", "refreshing")
    return {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()


def default_encoder(
    registry: Registry, workspace: Workspace, say: Callable[[str], None] | None = None
) -> str:
    """The encoder commands use when no ``--encoder`` is given: the current one after a
    refresh, else the only registered one; an encoder under refresh (not yet switched to) is
    never the default and does not make it ambiguous, and neither is the unmarked refresh
    (``<root>-r<k>``) an older release left unfinished (:func:`_settle_unmarked`;
    ``say`` gets a one-line note when that rule decided). :class:`NotFoundError` when none is
    registered, :class:`InputError` naming the encoders when several remain and none is
    current."""
    if (current := current_encoder(workspace)) is not None:
        return current
    with registry.session() as s:
        encoders = list(s.scalars(select(Encoder).order_by(Encoder.id)))
        s.expunge_all()
    roots = refresh_roots(encoders)  # of all of them: a chain may pass one under refresh
    refreshing = under_refresh(workspace)
    encoders = [e for e in encoders if e.name not in refreshing] or encoders
    if not encoders:
        raise NotFoundError("no encoder is registered: train one with `pomlia fingerprint train`")
    names, unfinished, stands = _settle_unmarked(registry, encoders, roots)
    if len(names) == 1:
        if say is not None and (note := _settled_note(names[0], unfinished, stands)):
            say(note)
        return names[0]
    first = shlex.quote(names[0])
    finish = "".join(
        f"; `pomlia fingerprint refresh -e {shlex.quote(root)}` finishes the refresh of "
        f"{root} into {name}, which then becomes the default"
        for name, root in unfinished.items()
    )
    raise InputError(
        f"several encoders are registered and none is current ({', '.join(names)}): pass "
        f"one with --encoder, e.g. --encoder {first}{finish}"
    )


def _settled_note(chosen: str, unfinished: dict[str, str], stands: dict[str, str]) -> str:
    """One line on how the unmarked refresh of an older release settled the default
    ``chosen`` (empty when no such refresh decided it); ``stands``: a refresh that stands for
    its family → that family's root."""
    if (root := stands.get(chosen)) is not None:
        return (
            f"default encoder {chosen}: an unfinished refresh of {root} by an older release "
            f"embedded every data set, so it is taken as finished (its index may be missing: "
            f"`pomlia index build -e {chosen}`)"
        )
    if unfinished:
        left = ", ".join(sorted(unfinished))
        return (
            f"default encoder {chosen}: the refresh an older release left unfinished ({left}) "
            f"stopped before its extraction; `pomlia fingerprint refresh -e {chosen}` finishes it"
        )
    return ""


def _settle_unmarked(
    registry: Registry, encoders: list[Encoder], roots: dict[str, str]
) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """The candidates for the default among ``encoders`` (none current), the unfinished
    refreshes left out (name → its root), and the refreshes that stand for their family
    (name → its root). A release before the refresh marker left a refresh it did not finish
    unmarked: a refresh of a root (``roots``, :func:`~pomlia_hpc.fingerprint.lineage.refresh_roots`:
    by its record, or by the name ``<root>-r<k>`` for rows without one) registered beside it,
    no pointer. That one is settled here, without writing anything: a refresh that has usable
    embeddings of every version it was trained on and of the current version of every data
    set its root has embeddings of finished its extraction, and stands for its family (the
    highest such k, then the newest); otherwise the refresh stopped before that, and the root
    stays the default, as a marked refresh's does. The current versions are those of when the
    refresh was registered (:func:`_embedded_all`): data added since does not make a finished
    refresh unfinished. An encoder named ``<root>-r<k>`` by hand is recorded as trained, no
    refresh: it is a candidate of its own."""
    by_name = {e.name: e for e in encoders}
    families: dict[str, list[Encoder]] = {}
    for enc in encoders:
        root = roots.get(enc.name, enc.name)
        if root != enc.name and root in by_name:
            families.setdefault(root, []).append(enc)
    out: dict[str, str] = {}  # each family's name → the one that stands for it
    for root, members in families.items():
        done = [
            (refresh_number(root, e.name) or 0, e.id, e.name)
            for e in members
            if _embedded_all(registry, by_name[root], e)
        ]
        out[root] = max(done)[2] if done else root
        for enc in members:
            out[enc.name] = out[root]
    unfinished = {
        e.name: root for root, members in families.items() for e in members if out[root] == root
    }
    stands = {out[root]: root for root in families if out[root] != root}
    names = list(dict.fromkeys(out.get(e.name, e.name) for e in encoders))
    return names, unfinished, stands


def _embedded_all(registry: Registry, root: Encoder, enc: Encoder) -> bool:
    """Whether ``enc`` has usable embeddings (the readers' rule, current weights) of every
    version it was trained on and of the version of every data set ``root`` has complete
    embeddings of that was current when ``enc`` was registered: what its refresh embedded
    before it would have switched. Not the versions current now: a version added since (one
    no refresh embedded) made a finished refresh's encoder unfinished, and the default
    silently went back to the root."""
    try:
        usable = {fs.dataset_version_id for fs, _ref in usable_sets(registry, enc).sets}
    except NotFoundError:  # its weights file is gone: not a finished refresh
        return False
    trained = set(enc.dataset_version_ids or [])
    had = {ref.split("@")[0] for _fs, ref in fingerprint_sets(registry, root.id)}
    return trained | _versions_then(registry, had, trained, enc.created_at) <= usable


def _versions_then(
    registry: Registry, names: set[str], trained: set[int], when: datetime
) -> set[int]:
    """The version ids a refresh that registered its encoder at ``when``, trained on
    ``trained``, embedded of the data sets ``names``: none more of a data set it trained on;
    else the version current then (today's current one if it existed by then, else the
    newest added by then); nothing of a data set added after."""
    current = current_versions(registry)
    with registry.session() as s:
        rows = s.execute(
            select(Dataset.name, DatasetVersion.id, DatasetVersion.created_at)
            .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
            .where(Dataset.name.in_(names))
        ).all()
    by_name: dict[str, list[tuple[datetime, int]]] = {}
    for name, vid, at in rows:
        by_name.setdefault(name, []).append((at, int(vid)))
    out: set[int] = set()
    for name, versions in by_name.items():
        if trained & {vid for _at, vid in versions}:
            continue
        now = current.get(name)
        if now is not None and now.created_at <= when:
            out.add(int(now.id))
        elif before := [(at, vid) for at, vid in versions if at <= when]:
            out.add(max(before)[1])
    return out


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
    write_json_atomic(_refresh_marker(workspace, plan.name), {"base": plan.base})
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
    _refresh_marker(workspace, plan.name).unlink(missing_ok=True)  # current now
    say(f"current encoder: {plan.name} (was {plan.base}); index {built.path}")
    return plan


def _trained(registry: Registry, name: str) -> bool:
    """Whether encoder ``name`` is registered with its weights on disk."""
    with registry.session() as s:
        path = s.scalar(select(Encoder.checkpoint_path).where(Encoder.name == name))
    return bool(path) and Path(str(path)).is_file()
