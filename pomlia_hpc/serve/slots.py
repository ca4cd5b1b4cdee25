"""Deployment slots: a stable name whose ``current`` link says which bundle is served.

Layout::

    <home>/serving/<slot>/current    symlink -> the exported bundle directory being served
    <home>/serving/<slot>/address    http://HOST:PORT of the server following the slot

``pomlia serve SLOT`` (or the link's path) serves the bundle the link names and follows the
link: when it changes, the server swaps bundles without dropping a request (:mod:`.app`).
The link is replaced atomically (a new link under a temporary name, renamed over the old one),
so a reader sees the old bundle or the new one, never a missing link. Which model a slot served
when, and why, is recorded in the registry by the gate (:mod:`pomlia_hpc.loop.promote`).

A server following a slot swaps only to a bundle of the same input spec and labels
(:func:`incompatible`): clients rely on them, and feedback on the labels. A promotion checks
the same rule against the bundle the link names before moving it (:func:`swap_problem`), so
the registry never names a champion the slot's servers refuse to serve.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pomlia_hpc.errors import PomliaError
from pomlia_hpc.files import replace_link
from pomlia_hpc.names import validate_name
from pomlia_hpc.serve.exported import CARD, ExportedBundle
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


def serving_spec(bundle: ExportedBundle) -> dict[str, object]:
    """What a running server's clients rely on in ``bundle`` (its input spec and labels),
    keyed as :func:`spec_problem` names them."""
    return {
        "image size": bundle.image_size,
        "channel count": bundle.channels,
        "16-bit intensity scaling maximum": bundle.scale_max,
        "task type": bundle.task_type,
        "label names": bundle.labels,
    }


def spec_problem(old: ExportedBundle, new: Mapping[str, object]) -> str | None:
    """Why a model of serving spec ``new`` (:func:`serving_spec`'s keys; a key left out is not
    compared: not known before export) cannot replace ``old`` in a running server, or None."""
    for what, a in serving_spec(old).items():
        if what in new and (b := new[what]) != a:
            verb = "are" if what.endswith("s") else "is"
            return f"its {what} {verb} {_shown(b)}, the served model's {_shown(a)}"
    return None


def incompatible(old: ExportedBundle, new: ExportedBundle) -> str | None:
    """Why ``new`` cannot replace ``old`` in a running server (clients and feedback rely on
    the input spec and the labels), or None."""
    return spec_problem(old, serving_spec(new))


def _shown(value: object) -> str:
    """A spec value in a message: a whole float as an integer (a 16-bit maximum of 3999.0 is
    3999), None (no 16-bit maximum: 8-bit or float training data, or none known) as words."""
    if value is None:
        return "none recorded"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def readable_bundle(root: Path | None) -> ExportedBundle | None:
    """The bundle at ``root`` as a server reads it; None when there is none or it cannot be
    opened (gone or damaged: no server can serve it)."""
    if root is None or not (root / CARD).is_file():
        return None
    try:
        return ExportedBundle.open(root)
    except PomliaError:
        return None


def swap_problem(link: Path, new: ExportedBundle) -> tuple[ExportedBundle, str] | None:
    """(the bundle ``link`` names, why a server following ``link`` would refuse to swap from
    it to ``new``), or None when it would swap (or the link names no readable bundle)."""
    old = readable_bundle(current_bundle(link))
    if old is None or old.root == new.root:
        return None
    problem = incompatible(old, new)
    return None if problem is None else (old, problem)
