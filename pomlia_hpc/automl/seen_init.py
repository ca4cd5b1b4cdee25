"""Refuse initial weights that have seen the task's val or test images.

``automl run --init-model M`` (and a recommended ``init=model`` strategy, the loop's
fine-tune) starts trials from M's weights. If M trained on images that are the task's val or
test images now (M trained on another version of the dataset whose split put them in train,
on another dataset holding copies, or started from a model that did), every trial is picked
on val and reported on test with images its weights already learnt: inflated metrics. What M
saw is read from the registry (:func:`pomlia_hpc.models.seen.seen_images`: its training
version's train split, its extra images, the encoder it started from, its own init chain),
compared by pixel hashes.

``automl run --encoder E`` is refused the same way when E's self-supervised training read
the task's val or test images (``fingerprint train --split all`` or ``--split test`` on the
task's data, or a dataset holding copies of them). No labels were read, but the encoder's
weights learnt those very images (a transductive leak of the test distribution): trials
started from them are picked and scored on images their features were fitted to, and the
loop's gate, which leaves what a model's encoder saw out of its comparison, would have no
fixed test images left. Refusing, not warning, keeps every reported test metric one of
unseen images, as for ``--init-model``.

A model whose lineage cannot say all it trained on (registered by hand, or before a lineage
field existed: :func:`pomlia_hpc.models.seen.lineage_gaps`) is not refused, as nothing says
it saw these images; the check returns one warning per gap for the caller to show.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from pomlia_hpc.errors import InputError
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.models.seen import Seen, encoder_seen, seen_images, split_hashes
from pomlia_hpc.registry import Dataset, DatasetVersion, Encoder, Registry
from pomlia_hpc.registry.lookup import by_name_or_id


def _refs(registry: Registry, ids: list[int]) -> list[str]:
    """``name@version`` of the dataset versions ``ids``."""
    with registry.session() as s:
        rows = s.execute(
            select(Dataset.name, DatasetVersion.version)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(DatasetVersion.id.in_(ids))
        )
        return [f"{n}@{v}" for n, v in rows]


def _found(seen: Seen, version: DatasetVersion) -> str:
    """``2 val and 5 test``: how many of ``version``'s val and test images ``seen`` holds,
    less those its own train split holds (every trial trains on them anyway); empty when
    none."""
    if not len(seen.hashes):
        return ""
    learnt = np.setdiff1d(seen.hashes, split_hashes(version, "train"), assume_unique=True)
    counts = {s: int(np.isin(split_hashes(version, s), learnt).sum()) for s in ("val", "test")}
    return " and ".join(f"{n} {s}" for s, n in counts.items() if n)


def refuse_seen_init(
    registry: Registry, model: str, version: DatasetVersion, ref: str, *, what: str = "--init-model"
) -> list[str]:
    """One :class:`InputError` when model ``model`` (name or id) trained on images of the val
    or test split of ``version`` (the task's data, ``ref``), with the counts per split and
    where it learnt them; otherwise the warnings for what its lineage cannot tell (empty when
    it is whole). Images the task's own train split holds (copies of val/test images a given
    split put in train) are not counted: every trial trains on them anyway. ``what`` names
    the model in the messages (the option, or where it came from)."""
    row = resolve_model(registry, model)
    # The task's own train split is what every trial trains on: what the model learnt of it
    # adds nothing unseen, also where a given split holds copies of val/test images in train.
    seen = seen_images(registry, row, skip_versions=(version.id,))
    found = _found(seen, version)
    if not found:
        return [
            f"{what} {row.name}: lineage unknown ({gap}); whether it trained on "
            f"{ref}'s val/test images cannot be checked"
            for gap in seen.unknown
        ]
    sources = ", ".join(_refs(registry, seen.versions)) or "its extra images"
    learnt = (
        f"{sources}, the rows of encoder(s) {', '.join(seen.encoders)} among them"
        if seen.encoders
        else f"the train split of {sources}"
    )
    chain = f" (through its init model(s) {', '.join(seen.models[1:])})" if seen.models[1:] else ""
    raise InputError(
        f"{what} {row.name} has trained on {found} image(s) of {ref} (learnt from "
        f"{learnt}{chain}): trials started from its weights would be picked "
        f"and scored on images they have seen (inflated val and test metrics); expected a "
        f"model that did not train on this task's val/test images (one trained on {ref}'s "
        "own train split, or on a version this one grew from)"
    )


def _encoder_found(
    registry: Registry, encoder: str, version: DatasetVersion, ref: str, what: str = "--encoder"
) -> tuple[str | None, list[str]]:
    """(``--encoder E has trained on 2 val and 5 test image(s) of REF (...)``: what encoder
    ``encoder`` (name or id) read of ``version``'s val and test images and where, None when
    nothing; the warnings for what its record cannot tell, ``--encoder E: lineage unknown
    (...)``, one per gap: :attr:`~pomlia_hpc.models.seen.Seen.unknown`)."""
    with registry.session() as s:
        row = by_name_or_id(s, Encoder, encoder, "encoder")
        s.expunge(row)
    seen = encoder_seen(registry, row, skip_versions=(version.id,))
    gaps = [
        f"{what} {row.name}: lineage unknown ({gap}); whether it trained on {ref}'s val/test "
        "images cannot be checked"
        for gap in seen.unknown
    ]
    found = _found(seen, version)
    if not found:
        return None, gaps
    split = (row.config or {}).get("split") or "train"
    rows = "every row" if split == "all" else f"the {split} split"
    return (
        f"{what} {row.name} has trained on {found} image(s) of {ref} (its self-supervised "
        f"training read {rows} of {', '.join(_refs(registry, seen.versions))})"
    ), gaps


def seen_encoder_problem(
    registry: Registry, encoder: str, version: DatasetVersion, ref: str, *, what: str = "--encoder"
) -> str | None:
    """Why fingerprint encoder ``encoder`` (name or id) may not initialise trials of the task
    on ``version`` (``ref``): it trained on images of that version's val or test split (the
    counts per split and the datasets it read them from; see the module docstring); None when
    it did not. ``what`` names the encoder in the message (the option, or where it came
    from)."""
    found, _ = _encoder_found(registry, encoder, version, ref, what)
    return None if found is None else _encoder_refusal(found, ref)


def _encoder_refusal(found: str, ref: str) -> str:
    """The refusal of an encoder that read ``found`` (:func:`_encoder_found`) of ``ref``."""
    return (
        f"{found}: trials started from its weights would be picked and scored on images their "
        "features were fitted to (a transductive leak: inflated val and test metrics); "
        "expected an encoder that did not train on this task's val/test images (`pomlia "
        f"fingerprint train ... --split train`, on {ref} or on datasets that do not hold them)"
    )


def encoder_for_weights(
    registry: Registry, encoder: str | None, version: DatasetVersion, ref: str, *, extra_data: bool
) -> tuple[str | None, list[str]]:
    """The encoder whose weights the study's trials may start from (``init=encoder``), and
    warnings. An encoder that trained on the task's val/test images is refused
    (:func:`seen_encoder_problem`), unless ``extra_data``: then it still finds the nearest
    images of other data sets (none of its weights reach a trial, and the images it finds
    are never copies of val/test images), so it is kept for that alone, without
    ``init=encoder``, and the warning says so. An encoder whose record cannot say all it
    read (no data sets recorded, or one no longer registered) is kept, with one warning per
    gap, as a model of unknown lineage is (:func:`refuse_seen_init`)."""
    if encoder is None:
        return None, []
    found, gaps = _encoder_found(registry, encoder, version, ref)
    if found is None:
        return encoder, gaps
    if not extra_data:
        raise InputError(_encoder_refusal(found, ref))
    kept = (
        f"{found}: it only finds the --extra-data images; init=encoder is not offered (no "
        "trial starts from weights fitted to the images it is picked and scored on)"
    )
    return None, [*gaps, kept]


def seen_start_problems(
    registry: Registry, task: str, *, encoder: str | None, init_model: str | None
) -> dict[str, str]:
    """Of a recommended start for ``task`` (``automl run --from-recommendation``: the
    recommendation's encoder and model of a similar task), the weights that trained on the
    task's val/test images, which ``--encoder`` and ``--init-model`` refuse: ``{"encoder":
    why, "model": why}`` (only those that did). The recommender picks them by similarity
    alone, so a study from its answer must leave them out rather than be refused whole."""
    from pomlia_hpc.automl.tasks import get_task, task_dataset

    version, ref = task_dataset(registry, get_task(registry, task))
    out: dict[str, str] = {}
    if encoder is not None:
        why = seen_encoder_problem(registry, encoder, version, ref, what="the recommended encoder")
        if why is not None:
            out["encoder"] = why
    if init_model is not None:
        try:
            refuse_seen_init(registry, init_model, version, ref, what="the recommended model")
        except InputError as exc:
            out["model"] = exc.message
    return out
