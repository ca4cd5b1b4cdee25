"""Which fingerprint sets a reader compares: of dataset versions embedded with an encoder, the
usable ones (:mod:`.usable`), of each dataset only the version its plain name means (else its
newest with embeddings) unless all versions are asked for, and the versions left out, each with
why. Similar datasets (:mod:`.similar`), nearest images (:mod:`.nearest`) and the latent plots
choose their sets here.

``encoder`` is an encoder id, name or registry row; datasets are ``name`` (newest version) or
``name@version`` and must have been extracted with that encoder (``pomlia fingerprint
extract``)."""

from __future__ import annotations

from collections.abc import Callable

from pomlia_hpc.data.store import current_versions
from pomlia_hpc.fingerprint.encoders import get_encoder
from pomlia_hpc.fingerprint.usable import (
    LeftOut,
    extract_command,
    left_out_note,
    usable_set,
    usable_sets,
)
from pomlia_hpc.registry import Encoder, FingerprintSet, Registry

EncoderRef = int | str | Encoder


def fingerprint_set(
    registry: Registry, encoder: EncoderRef, ref: str
) -> tuple[FingerprintSet, str]:
    """The usable fingerprint set of dataset ``ref`` under ``encoder`` (complete, on disk, made
    with the encoder's current weights: :mod:`.usable`), with its full ref; else one
    :class:`NotFoundError` saying why and what to run."""
    return usable_set(registry, encoder, ref)


def version_preference(registry: Registry) -> Callable[[int], tuple[bool, int]]:
    """Sort key of a dataset version id: the version the plain name means
    (:func:`~pomlia_hpc.data.store.current_versions`) first, then the highest id."""
    current = {v.id for v in current_versions(registry).values()}
    return lambda version_id: (version_id in current, version_id)


def newest_sets(
    registry: Registry, sets: list[tuple[FingerprintSet, str]]
) -> list[tuple[FingerprintSet, str]]:
    """Of ``sets`` (``(set, name@version)`` pairs, as :func:`candidates` gives them), the one
    of each dataset's current version (as ``name`` alone resolves), else of its newest version
    among ``sets``, in their order."""
    key = version_preference(registry)
    best: dict[str, int] = {}
    for fs, ref in sets:
        name = ref.split("@")[0]
        best[name] = max(best.get(name, fs.dataset_version_id), fs.dataset_version_id, key=key)
    return [(fs, r) for fs, r in sets if fs.dataset_version_id == best[r.split("@")[0]]]


def superseded_refs(registry: Registry, encoder: EncoderRef) -> list[str]:
    """The ``name@version`` of every usable fingerprint set of ``encoder`` whose dataset has
    another version with usable embeddings that is preferred (:func:`newest_sets`): what
    similar datasets, nearest images and the latent plots leave out unless asked for all
    versions."""
    sets = usable_sets(registry, encoder).sets
    kept = {fs.id for fs, _ref in newest_sets(registry, sets)}
    return [ref for fs, ref in sets if fs.id not in kept]


def candidates(
    registry: Registry, encoder: EncoderRef, *, all_versions: bool = False
) -> tuple[list[tuple[FingerprintSet, str]], list[LeftOut]]:
    """The sets a reader compares (usable ones; of each dataset only its newest unless
    ``all_versions``) and the versions it left out for being unusable (:mod:`.usable`). With
    one version per dataset, an unusable version is named only when it would have been
    preferred to the one used (an older one would not have been used anyway)."""
    found = usable_sets(registry, encoder)
    embedded = {fs.dataset_version_id for fs, _r in found.sets} | {
        x.version_id for x in found.left_out
    }
    if all_versions:  # every version with embeddings: the current one is still named if none
        stale = _current_not_extracted(registry, encoder, found.sets, embedded)
        return found.sets, found.left_out + stale
    sets = newest_sets(registry, found.sets)
    prefer = version_preference(registry)
    used = {ref.split("@")[0]: prefer(fs.dataset_version_id) for fs, ref in sets}
    left = [
        x
        for x in found.left_out
        if x.ref.split("@")[0] not in used or prefer(x.version_id) > used[x.ref.split("@")[0]]
    ]
    return sets, left + _current_not_extracted(registry, encoder, sets, embedded)


def _current_not_extracted(
    registry: Registry,
    encoder: EncoderRef,
    sets: list[tuple[FingerprintSet, str]],
    embedded: set[int],
) -> list[LeftOut]:
    """The current versions never embedded with ``encoder`` (no version id in ``embedded``)
    of the datasets compared through another version (``sets``): a dataset that got a new
    version after its extraction is compared as it was, and must not be so silently."""
    current = current_versions(registry)
    enc = get_encoder(registry, encoder).name
    compared: dict[str, list[str]] = {}  # one note a dataset, though several versions stand in
    for fs, ref in sets:
        now = current.get(name := ref.split("@")[0])
        if now is not None and now.id != fs.dataset_version_id and now.id not in embedded:
            compared.setdefault(name, []).append(ref)
    # Named by its version: the plain name beside a result of the same name, in one answer,
    # read as that result left out.
    return [
        LeftOut(
            f"{name}@{current[name].version}",
            f"current version not extracted; {', '.join(refs)} compared instead",
            extract_command(name, enc),
            current[name].id,
        )
        for name, refs in compared.items()
    ]


def left_out_clause(left: list[LeftOut]) -> str:
    """`` (left out: ...)`` for an error that would otherwise hide why nothing was left."""
    return f" ({left_out_note(left)})" if left else ""
