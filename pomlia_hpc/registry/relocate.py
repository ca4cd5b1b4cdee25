"""A workspace that moved: which folder the registry's paths name, and rewriting them.

The registry and some of the workspace's own records hold absolute paths (a dataset version's
store, an encoder's weights, a model's checkpoint and bundle, a study's store and SMAC folder,
a slot's ``current`` link). After ``mv`` or ``cp -a`` of the whole workspace those still name
the old place, and every reader would fail there with an error about a missing file. So the
CLI checks, on opening the registry, which workspace its paths were written in
(:func:`recorded_home`), and ``pomlia registry relocate`` (:func:`relocate`) rewrites them:
nothing is moved or copied, only the names of the old place become the new one's.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, String, select, update

from pomlia_hpc.errors import ConfigError
from pomlia_hpc.files import replace_link, write_atomic
from pomlia_hpc.registry.db import Registry
from pomlia_hpc.registry.schema import Base, DatasetVersion

#: Workspace folders whose JSON files are never rewritten: the immutable, content-hashed
#: stores and embeddings (their metadata names the source, not the workspace), and the
#: prediction logs, job folders and staging area (history and temporaries, read by no resume).
SKIPPED_DIRS = frozenset({"stores", "embeddings", "logs", "jobs", "tmp"})


class WorkspaceMovedError(ConfigError):
    """The registry's paths name a workspace folder that no longer exists."""


@dataclass
class Relocation:
    """What :func:`relocate` changed (or, dry, would change)."""

    old: Path
    new: Path
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows rewritten
    files: list[Path] = field(default_factory=list)  # JSON records rewritten
    links: list[Path] = field(default_factory=list)  # symbolic links pointed anew
    unreadable: list[Path] = field(default_factory=list)  # JSON files that do not parse


def recorded_home(registry: Registry) -> Path | None:
    """The workspace folder the registry's paths were written in, read off the newest dataset
    version's store path (``<home>/stores/<name>/<version>.zarr``); None when there is no
    version or its path does not have that form (nothing to compare)."""
    with registry.session() as s:
        path = s.scalar(select(DatasetVersion.store_path).order_by(DatasetVersion.id.desc()))
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute() or p.suffix != ".zarr" or len(p.parents) < 3:
        return None
    return p.parents[2] if p.parents[1].name == "stores" else None


def home_note(registry: Registry, home: Path) -> str | None:
    """Check that the registry's paths name ``home`` (the resolved workspace folder).

    Raises :class:`WorkspaceMovedError` when they name a folder that does not exist (the
    workspace was moved: every store, model and study would be missing); returns a warning
    when they name another folder that exists (a copy, which would read the original's files);
    None when they name ``home`` or nothing."""
    old = recorded_home(registry)
    if old is None or old == home:
        return None
    if not old.exists():
        raise WorkspaceMovedError(
            f"the registry {registry.display_url()} names workspace {old}, which does not "
            f"exist; this workspace is {home}",
            hint=(
                "if the workspace was moved here, run `pomlia registry relocate` (it rewrites "
                "the paths, moves no data); if the registry is another workspace's, point "
                "--home / POMLIA_HOME there"
            ),
        )
    return (
        f"warning: the registry {registry.display_url()} names workspace {old}, not this one "
        f"({home}): datasets, models and studies are read from there; if this workspace is a "
        "copy meant to stand alone, run `pomlia registry relocate`"
    )


def moved(value: str, old: str, new: str) -> str | None:
    """``value`` with the leading folder ``old`` replaced by ``new``; None if it is not
    ``old`` or a path under it (a name that merely starts the same is not)."""
    if value == old:
        return new
    return new + value[len(old) :] if value.startswith(old + "/") else None


def moved_json(data: Any, old: str, new: str) -> tuple[Any, bool]:
    """``data`` (parsed JSON) with every string that :func:`moved` rewrites rewritten, and
    whether anything changed; keys are names, never paths, and stay."""
    if isinstance(data, str):
        out = moved(data, old, new)
        return (data, False) if out is None else (out, True)
    if isinstance(data, list):
        pairs = [moved_json(v, old, new) for v in data]
        return [v for v, _ in pairs], any(c for _, c in pairs)
    if isinstance(data, dict):
        changed = False
        result = {}
        for k, v in data.items():
            result[k], c = moved_json(v, old, new)
            changed = changed or c
        return result, changed
    return data, False


def _walk(home: Path) -> Iterator[Path]:
    """Every file and link under ``home`` outside :data:`SKIPPED_DIRS`, not following links."""
    for root, dirs, files in os.walk(home):
        top = Path(root) == home
        dirs[:] = [d for d in dirs if not (top and d in SKIPPED_DIRS)]
        for name in files + [d for d in dirs if Path(root, d).is_symlink()]:
            yield Path(root, name)


def _rewrite_files(rel: Relocation, *, dry_run: bool) -> None:
    """Rewrite the JSON records and re-point the absolute links under the new home."""
    old, new = str(rel.old), str(rel.new)
    for path in _walk(rel.new):
        if path.is_symlink():
            target = moved(str(path.readlink()), old, new)
            if target is not None:
                rel.links.append(path)
                if not dry_run:
                    replace_link(path, target)
            continue
        if path.suffix != ".json" or path.name.startswith("."):
            continue  # temporaries (.<name>.<host>.<pid>.tmp.json) belong to their writers
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            rel.unreadable.append(path)
            continue
        data, changed = moved_json(data, old, new)
        if changed:
            rel.files.append(path)
            if not dry_run:  # same permission bits: a record another user reads stays readable
                mode = stat.S_IMODE(path.stat().st_mode)
                write_atomic(path, json.dumps(data, indent=1), mode=mode)


def _rewrite_rows(registry: Registry, rel: Relocation, *, dry_run: bool) -> None:
    """Rewrite every text and JSON column of every table in one transaction."""
    old, new = str(rel.old), str(rel.new)
    with registry.session() as s:
        for table in Base.metadata.sorted_tables:
            cols = [c for c in table.columns if isinstance(c.type, String | JSON)]
            keys = list(table.primary_key.columns)
            if not cols or not keys:
                continue
            n = 0
            for row in s.execute(select(*keys, *cols)).all():
                values: dict[str, Any] = {}
                for col, value in zip(cols, row[len(keys) :], strict=True):
                    if isinstance(value, str) and not isinstance(col.type, JSON):
                        out = moved(value, old, new)
                        if out is not None:
                            values[col.name] = out
                    elif value is not None:
                        out, changed = moved_json(value, old, new)
                        if changed:
                            values[col.name] = out
                if values:
                    n += 1
                    if not dry_run:
                        where = [k == v for k, v in zip(keys, row[: len(keys)], strict=True)]
                        s.execute(update(table).where(*where).values(**values))
            if n:
                rel.rows[table.name] = n


def relocate(
    registry: Registry,
    home: Path,
    *,
    old: Path | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> Relocation:
    """Make the registry and the workspace's records at ``home`` name ``home`` instead of
    ``old`` (:func:`recorded_home` when not given; required unless the registry is a SQLite
    file inside ``home``, as a shared one may name other workspaces). The records and links
    are rewritten first, each atomically, then the registry in one transaction, so an
    interrupted run is finished by running it again. Raises :class:`ConfigError` when there
    is nothing to relocate from, and, unless ``force``, when ``old`` still exists and the
    registry is not a file inside ``home``: the workspace there (a copy's original) uses the
    same registry, whose paths would then name ``home``."""
    own = (
        registry.engine.url.get_backend_name() == "sqlite"
        and home in Path(registry.engine.url.database or "/").parents
    )
    if old is None and not own:
        # a registry several workspaces may share: its newest store may be another user's,
        # whose rows would be rewritten to name this workspace
        raise ConfigError(
            f"registry {registry.display_url()} is not a file inside this workspace and may "
            "hold other workspaces' paths, so its newest dataset store does not tell which "
            "folder this workspace was in; expected --from OLD_FOLDER"
        )
    old = old or recorded_home(registry)
    if old is None:
        raise ConfigError(
            f"registry {registry.display_url()}: no dataset store path to tell the old "
            "workspace folder from; expected --from OLD_FOLDER"
        )
    if not old.is_absolute():
        raise ConfigError(f"--from {old}: expected an absolute folder")
    rel = Relocation(old=Path(os.path.normpath(old)), new=home)
    if rel.old == rel.new:
        return rel
    if rel.old.exists() and not own and not force:
        raise ConfigError(
            f"{rel.old} still exists and uses the same registry {registry.display_url()}, "
            f"whose paths would name {home} afterwards; expected a workspace moved away from "
            "there (or a copy with a registry of its own); --force takes the registry over"
        )
    _rewrite_files(rel, dry_run=dry_run)
    _rewrite_rows(registry, rel, dry_run=dry_run)
    return rel
