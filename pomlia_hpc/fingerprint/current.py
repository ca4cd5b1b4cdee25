"""Which encoder the commands that take ``--encoder`` use when none is given, without torch.

The current encoder is named in ``<home>/indexes/current-encoder.json`` (a finished
``pomlia fingerprint refresh`` switches it); an encoder under refresh is marked
(``<home>/indexes/refreshing/<name>.json``) until that switch. :func:`default_encoder` reads
both and the registry. Kept apart from :mod:`pomlia_hpc.fingerprint.refresh` (training and
extraction: torch, torchvision, DeepSpeed) so that ``pomlia similar`` and the other readers
resolve their encoder in a process that never loads torch (seconds per command).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from pomlia_hpc.data.store import current_versions
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.fingerprint.lineage import refresh_number, refresh_roots
from pomlia_hpc.fingerprint.usable import fingerprint_sets, usable_sets
from pomlia_hpc.registry import Dataset, DatasetVersion, Encoder, Registry
from pomlia_hpc.workspace import Workspace

POINTER = "current-encoder.json"


def pointer_path(workspace: Workspace) -> Path:
    """Where the current encoder's name is kept."""
    return workspace.path("indexes", POINTER)


def current_encoder(workspace: Workspace) -> str | None:
    """The encoder the pointer names, or None when no refresh has set one."""
    path = pointer_path(workspace)
    if not path.is_file():
        return None
    return str(json.loads(path.read_text())["encoder"])


def refresh_marker(workspace: Workspace, name: str) -> Path:
    """The marker of the encoder ``name`` while a refresh makes it (until the switch)."""
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
