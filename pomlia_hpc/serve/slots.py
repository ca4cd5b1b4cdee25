"""Deployment slots: a stable name whose ``current`` link says which bundle is served.

Layout::

    <home>/serving/<slot>/current    symlink -> the exported bundle directory being served
    <home>/serving/<slot>/address    http://HOST:PORT of the server following the slot

``pomlia serve SLOT`` (or the link's path) serves the bundle the link names and follows the
link: when it changes, the server swaps bundles without dropping a request (:mod:`.app`).
The link is replaced atomically (a new link under a temporary name, renamed over the old one),
so a reader sees the old bundle or the new one, never a missing link. Which model a slot served
when, and why, is recorded in the registry by the gate (:mod:`pomlia_hpc.loop.promote`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pomlia_hpc.files import replace_link
from pomlia_hpc.names import validate_name
from pomlia_hpc.workspace import Workspace

CURRENT = "current"
ADDRESS = "address"


def slot_dir(workspace: Workspace, slot: str) -> Path:
    """The folder of deployment slot ``slot``."""
    validate_name("slot", slot, max_len=128)
    return workspace.path("serving", slot)


def current_link(workspace: Workspace, slot: str) -> Path:
    """The ``current`` link of ``slot`` (it may not exist yet)."""
    return slot_dir(workspace, slot) / CURRENT


def current_bundle(link: Path) -> Path | None:
    """The directory ``link`` names, or None if there is no link."""
    if not link.is_symlink():
        return None
    return Path(os.path.realpath(link))


def point(link: Path, bundle_root: Path) -> bool:
    """Make ``link`` name ``bundle_root`` atomically; False if it already did."""
    target = Path(bundle_root).resolve()
    if current_bundle(link) == target:
        return False
    replace_link(link, target)
    return True
