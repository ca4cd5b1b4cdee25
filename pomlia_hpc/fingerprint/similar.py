"""Similar datasets — what AutoML and the strategy recommender call.

Public API::

    dataset_fingerprint(registry, encoder, "pathmnist") -> dict
        mean embedding (the paper's fingerprint), n, plus the explicit fingerprint JSON
    similar_datasets(registry, encoder, "pathmnist", k=5, distance="combined")
        -> [SimilarDataset(ref, distance, n_vectors, components), ...] nearest first

Beside it: :func:`~pomlia_hpc.fingerprint.nearest.nearest_images` (the images of other
datasets nearest to a dataset's, from the FAISS index) and
:func:`~pomlia_hpc.fingerprint.sample.embedding_sample` (an (n, d) sample of a dataset's
embeddings); which versions are compared is :mod:`.candidates`.

``encoder`` is an encoder id, name or registry row; datasets are ``name`` (newest version) or
``name@version`` and must have been extracted with that encoder (``pomlia fingerprint
extract``). Distances are those of :mod:`pomlia_hpc.fingerprint.ranking`, computed from the
per-version summaries stored at extraction (:mod:`pomlia_hpc.fingerprint.summary`). Other
versions of the query's own dataset are left out unless ``include_same_dataset=True``. Of every
other dataset only its newest version with embeddings under the encoder is compared, unless
``all_versions=True``: a dataset is never listed twice;
:func:`~pomlia_hpc.fingerprint.candidates.superseded_refs` names the versions left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.fingerprint.candidates import (
    EncoderRef,
    candidates,
    fingerprint_set,
    left_out_clause,
)
from pomlia_hpc.fingerprint.encoders import get_encoder
from pomlia_hpc.fingerprint.ranking import DEFAULT_DISTANCE, check_distance, fields_for, score
from pomlia_hpc.fingerprint.summary import Summary, compute_summary, read_summary
from pomlia_hpc.fingerprint.usable import (
    LeftOut,
    Unrecorded,
    extract_command,
    patch_extract_command,
    unrecorded,
)
from pomlia_hpc.registry import FingerprintSet, Registry


@dataclass(frozen=True)
class SimilarDataset:
    """``same_content``: the version has the query's content hash (the same images under
    another name), so its distance is about 0 by construction."""

    ref: str
    distance: float
    n_vectors: int
    components: dict[str, float] = field(default_factory=dict)
    same_content: bool = False


def dataset_fingerprint(
    registry: Registry,
    encoder: EncoderRef,
    ref: str,
    *,
    unrecorded_out: list[Unrecorded] | None = None,
) -> dict[str, Any]:
    """The dataset-level fingerprint: mean embedding, size, and the explicit fingerprint. A
    set used as its unrecorded extraction left it (:mod:`.usable`) is appended to
    ``unrecorded_out``."""
    fs, full = fingerprint_set(registry, encoder, ref)
    if unrecorded_out is not None:
        unrecorded_out.extend(unrecorded([(fs, full)], get_encoder(registry, encoder)))
    store = open_store(find_version(registry, full).store_path)
    return {
        "dataset": full,
        "encoder": get_encoder(registry, encoder).name,
        "n_vectors": fs.n_vectors,
        "mean": list(fs.mean),
        "explicit": store.fingerprint,
    }


def load_summary(
    registry: Registry, fs: FingerprintSet, ref: str, fields: frozenset[str] | None = None
) -> Summary:
    """The stored summary of a complete fingerprint set (only ``fields`` of it, see
    :func:`read_summary`); sets extracted before summaries existed get theirs computed from
    the embeddings now, in memory: a reader writes nothing (`pomlia fingerprint extract` run
    again on such a set stores it, :func:`~pomlia_hpc.fingerprint.usable.record_finished`)."""
    found = read_summary(fs.embeddings_path, fields)
    if found is not None:
        return found
    fp = open_store(find_version(registry, ref).store_path).fingerprint
    return compute_summary(fs.embeddings_path, fp)


#: A data set of fewer images than this is named under the results: its summaries (mean,
#: covariance, quantiles) rest on too few embeddings to rank it with confidence. At 30 the
#: standard error of a mean embedding is 1/sqrt(30), under a fifth of the spread, and the
#: covariance of a 16-dimensional latent (the default) has about two images per dimension;
#: below 17 it is singular, so the Fréchet distance is mostly its regularisation.
FEW_IMAGES = 30


def few_images_note(query: str, query_images: int, found: list[SimilarDataset]) -> str:
    """The note naming the query (``query_images`` images) and the data sets of ``found``
    with fewer than :data:`FEW_IMAGES` images (empty when none)."""
    few = [f"{r.ref} ({r.n_vectors})" for r in found if r.n_vectors < FEW_IMAGES]
    if query_images < FEW_IMAGES:
        few.insert(0, f"{query} (the query, {query_images})")
    if not few:
        return ""
    return (
        f"few images: {', '.join(few)}: a distance over fewer than {FEW_IMAGES} images rests "
        "on little data (their mean and spread are uncertain); rank them with care"
    )


def similar_datasets(
    registry: Registry,
    encoder: EncoderRef,
    ref: str,
    k: int = 5,
    distance: str = DEFAULT_DISTANCE,
    *,
    include_same_dataset: bool = False,
    patches: bool = False,
    all_versions: bool = False,
    left_out: list[LeftOut] | None = None,
    unrecorded_out: list[Unrecorded] | None = None,
    notes_out: list[str] | None = None,
) -> list[SimilarDataset]:
    """The ``k`` datasets nearest to ``ref`` by ``distance`` (see
    :mod:`pomlia_hpc.fingerprint.ranking`), each with the components of its distance.

    Reads only the per-version summaries stored at extraction, never the embeddings.
    ``patches=True`` compares the patch embeddings (``--patch-grid``) instead of whole-image
    ones (latent distances only; the explicit part is the same). Of every other dataset only
    its newest version with usable embeddings is compared unless ``all_versions=True``.
    Versions left out as unusable (:func:`candidates`) are appended to ``left_out``, those
    used as their unrecorded extraction left them (:mod:`.usable`) to ``unrecorded_out``, the
    note naming data sets of few images (:func:`few_images_note`) to ``notes_out``; a
    version with the query's content hash is compared and marked ``same_content``."""
    if k < 1:
        raise InputError(f"--k {k}: expected a number of datasets >= 1")
    check_distance(distance)
    enc = get_encoder(registry, encoder)
    fs, full = fingerprint_set(registry, enc, ref)
    name, content = full.split("@")
    sets, left = candidates(registry, enc, all_versions=all_versions)
    others = [
        (other, other_ref)
        for other, other_ref in sets
        if other.id != fs.id and (include_same_dataset or other_ref.split("@")[0] != name)
    ]
    left = [x for x in left if include_same_dataset or x.ref.split("@")[0] != name]
    if left_out is not None:
        left_out.extend(left)
    if not others:
        raise NotFoundError(
            f"nothing to compare '{full}' with: no other dataset has usable embeddings under "
            f"encoder '{enc.name}'{left_out_clause(left)}",
            hint=f"embed another dataset first: `{extract_command('DATASET', enc.name)}`",
        )
    if unrecorded_out is not None:
        unrecorded_out.extend(unrecorded([(fs, full), *others], enc))
    need = fields_for(distance)
    query = load_summary(registry, fs, full, need)
    summaries = [load_summary(registry, o, r, need) for o, r in others]
    if patches and distance != "explicit":
        others, summaries = _with_patches(full, enc.name, query, others, summaries, notes_out)
    scored = score(query, summaries, distance, patches=patches) if summaries else []
    out = [
        SimilarDataset(r, sc.distance, o.n_vectors, sc.components, r.split("@")[1] == content)
        for (o, r), sc in zip(others, scored, strict=True)
    ]
    out.sort(key=lambda r: (r.distance, r.ref))
    few = few_images_note(full, fs.n_vectors, out[:k])
    if notes_out is not None and few:
        notes_out.append(few)
    return out[:k]


def _with_patches(
    full: str,
    encoder: str,
    query: Summary,
    others: list[tuple[FingerprintSet, str]],
    summaries: list[Summary],
    notes_out: list[str] | None,
) -> tuple[list[tuple[FingerprintSet, str]], list[Summary]]:
    """The candidates that have patch embeddings, and their summaries; the others are named
    in a note (one data set extracted without ``--patch-grid`` refused the whole comparison,
    naming none). The query must have them."""

    if query.patches is None:
        raise InputError(
            f"'{full}' has no patch embeddings: expected an extraction with --patch-grid > 1 "
            f"to compare patches (`{patch_extract_command(full.split('@')[0], encoder)}`)"
        )
    keep = [i for i, sm in enumerate(summaries) if sm.patches is not None]
    missing = [ref for (_fs, ref), sm in zip(others, summaries, strict=True) if sm.patches is None]
    if not keep:
        raise NotFoundError(
            f"nothing to compare '{full}' with by patches: no other dataset has patch "
            f"embeddings under encoder '{encoder}' ({', '.join(missing)} have none)",
            hint=f"`{patch_extract_command('DATASET', encoder)}` for each",
        )
    if missing and notes_out is not None:
        notes_out.append(
            f"not compared by patches (extracted without --patch-grid): {', '.join(missing)}; "
            f"`{patch_extract_command('DATASET', encoder)}` for each"
        )
    return [others[i] for i in keep], [summaries[i] for i in keep]


def same_content_note(query: str, found: list[SimilarDataset]) -> str:
    """The note naming the versions of ``found`` that hold ``query``'s own images under
    another name (empty when none)."""
    same = [r.ref for r in found if r.same_content]
    if not same:
        return ""
    return (
        f"same content as {query}: {', '.join(same)} (the same images under another name, "
        "at distance about 0)"
    )
