"""What ``pomlia data add`` prints about the version it made: the result on stdout, and on
stderr the notes and warnings on how the source was read (labels, classes, splits, image
size) and how the version differs from its parent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape

from pomlia_hpc.cli.app import STATE, console, err_console
from pomlia_hpc.cli.folder_notes import (
    print_folder_notes,
    print_pixel_notes,
    print_skipped_files,
)
from pomlia_hpc.cli.jsonout import print_json

if TYPE_CHECKING:
    from pomlia_hpc.data.versioning import VersionRecord


def _ingested_record(rec: VersionRecord) -> dict[str, Any]:
    """``data add --json``: the version's record (sizes in images)."""
    from pomlia_hpc.data.splits import split_sizes

    return {
        "name": rec.name,
        "version": rec.version,
        "ref": rec.ref,
        "created": rec.created,
        "parent": rec.parent,
        "n_images": rec.n_images,
        "splits": split_sizes(rec.meta),
        "n_classes": rec.meta.get("n_classes"),
        "task_type": rec.meta.get("task_type"),
        "store": str(rec.store_path),  # kept for the scripts that read it: store_path
        "repaired": list(rec.repaired),
        # the key `data list` and `data show` give the same path under
        "store_path": str(rec.store_path),
    }


def print_ingested(name: str, rec: VersionRecord, as_json: bool = False) -> None:
    """What ``data add`` made of the source (``rec``, the ingest record): on stdout the version,
    its store and split sizes (``as_json``: one JSON object); on stderr the notes, warnings
    and, for a new version of a known name, how it differs from its parent."""
    from pomlia_hpc.data.splits import describe_splits

    if as_json:
        print_json(_ingested_record(rec))
    else:
        what = "new version" if rec.created else "identical content: existing version"
        parent = f", parent {rec.parent}" if rec.parent else ""
        console.print(f"{what} [bold]{rec.ref}[/] ({rec.n_images} images{parent})")
        console.print(f"store: {rec.store_path}")
        console.print(f"splits: {describe_splits(rec.meta)}")
    # Notes and warnings go to stderr: `V=$(pomlia data add ...)` captures the result only.
    if rec.repaired:
        err_console.print(
            f"[yellow]repaired:[/] the existing store was damaged ({'; '.join(rec.repaired)}) "
            "and has been rewritten from this source"
        )
    elif not rec.created and not as_json:
        console.print("store checked: every chunk matches this source")
    if not rec.created and rec.was_current:
        err_console.print(
            f"[yellow]note:[/] '{name}' now means this version again (it meant "
            f"{name}@{rec.was_current}, the one added before); tasks already registered keep "
            f"their version; name {name}@{rec.was_current} to use the other"
        )
    _print_notes(rec.meta)
    _print_reading(rec.meta)
    _print_duplicates(rec.fingerprint)
    _print_copies(name, rec.version)
    if rec.created:
        _print_carried(name, rec.meta)
    if rec.created and rec.parent:
        _print_changes(name, rec.parent, rec.meta)
        _print_resplit(name, rec)


def _print_carried(name: str, meta: dict[str, Any]) -> None:
    """Whether a carved split kept its parent version's images in their splits
    (:func:`~pomlia_hpc.data.carry.carried_note`)."""
    from pomlia_hpc.data.carry import carried_note

    source = meta.get("source") or {}
    parent = (source.get("split_carried") or {}).get("from")
    for level, text in carried_note(source, f"{name}@{parent}") if parent else []:
        err_console.print(f"[yellow]{level}:[/] {escape(text)}", highlight=False)


def _print_resplit(name: str, rec: VersionRecord) -> None:
    """A note when the new version ``rec`` holds exactly its parent's images, split another
    way (:func:`~pomlia_hpc.data.splits.resplit_note`)."""
    from pomlia_hpc.data.splits import resplit_note
    from pomlia_hpc.data.store import open_store, open_version
    from pomlia_hpc.errors import PomliaError

    old = f"{name}@{rec.parent}"
    try:  # a note only: a parent that cannot be read is not this command's error
        text = resplit_note(open_store(rec.store_path), open_version(STATE.registry(), old))
    except PomliaError:
        return
    if text:
        err_console.print(f"[yellow]note:[/] {escape(text)}", highlight=False)


def _print_duplicates(fingerprint: dict[str, Any]) -> None:
    """Warn about val/test images copied from train and duplicates with conflicting labels."""
    from pomlia_hpc.data.leakage import duplicate_warning

    warning = duplicate_warning(fingerprint)
    if warning:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")


def _print_copies(name: str, version: str) -> None:
    """Name the versions of other data sets that hold exactly these images
    (:func:`~pomlia_hpc.data.leakage.copies_elsewhere`)."""
    from pomlia_hpc.data.leakage import copies_elsewhere

    for level, text in copies_elsewhere(STATE.registry(), name, version):
        err_console.print(f"[yellow]{level}:[/] {escape(text)}", highlight=False)


def _print_changes(name: str, parent: str, meta: dict[str, Any]) -> None:
    """Warn when a new version of ``name`` has other classes, channels or task type than its
    parent (the previous newest version): commands naming the dataset now get the new one."""
    from pomlia_hpc.data.api import show
    from pomlia_hpc.data.classes import version_changes

    changes = version_changes(show(STATE.registry(), f"{name}@{parent}").meta, meta)
    if changes:
        err_console.print(
            f"[yellow]warning:[/] this version of '{name}' differs from the previous one "
            f"({name}@{parent}): {escape('; '.join(changes))}. Tasks already registered keep the "
            f"version they were made with; `pomlia task add --dataset {name}` and other "
            f"commands naming '{name}' now use this one (name {name}@{parent} for the old)"
        )


_UNUSED = (
    " (a class in no split is still an output of every model: the classes are those "
    "declared by --n-classes / --class-names, else 0 .. the largest label)"
)


def _print_notes(meta: dict[str, Any]) -> None:
    """The split sizes of an ingested version, a warning for an empty split (no task can be
    made of it), for class folders skipped as empty, for classes without images in a split
    and for fewer than 2 classes with training images, and a note on gray images converted
    to RGB."""
    from pomlia_hpc.data.classes import classes_without_images, describe_missing, train_classes
    from pomlia_hpc.data.splits import empty_splits, fill_hint

    empty = empty_splits(meta)
    if empty:
        err_console.print(
            f"[yellow]warning:[/] no {' or '.join(empty)} images: `pomlia task add` refuses "
            f"this version (AutoML needs train, val and test images); {fill_hint(meta, empty)}"
        )
    skipped = (meta.get("source") or {}).get("skipped_empty_folders") or []
    if skipped:
        err_console.print(
            f"[yellow]warning:[/] skipped {len(skipped)} class folder(s) without images "
            f"(not made classes): {escape(', '.join(skipped))}"
        )
    missing = classes_without_images(meta)
    if missing:
        err_console.print(
            f"[yellow]warning:[/] class(es) without images in a split: "
            f"{escape(describe_missing(missing))}"
            + (_UNUSED if any(len(v) == 3 for v in missing.values()) else "")
        )
    multi = str(meta.get("task_type", "")).startswith("multi-label")
    if not multi and "train" not in empty and len(train_classes(meta)) < 2:
        err_console.print(
            "[yellow]warning:[/] fewer than 2 classes have training images: `pomlia task add` "
            "refuses this version (a classification task needs at least 2)"
            + escape(_one_class_layout(meta.get("source") or {}))
        )
    print_folder_notes(meta.get("source") or {})
    print_skipped_files(meta.get("source") or {})
    print_pixel_notes(meta.get("source") or {})
    gray = int((meta.get("source") or {}).get("gray_to_rgb", 0))
    if gray:
        err_console.print(
            f"[yellow]note:[/] {gray} gray image(s) converted to RGB (the folder mixes gray "
            "and colour images; each gray value is copied to the 3 channels)"
        )


def _one_class_layout(source: dict[str, Any]) -> str:
    """For an image folder read as one class whose images sit in sub-folders (one level too
    deep, ``train/images/<class>/``): where the class folders belong, naming what was found."""
    found = source.get("one_class_folder") or {}
    subs = found.get("subfolders") or []
    if not subs:
        return ""
    folder = str(found["folder"])
    shown = ", ".join(f"'{s}'" for s in subs[:5]) + (
        f" and {len(subs) - 5} more" if len(subs) > 5 else ""
    )
    if source.get("layout") == "split folders":
        split = folder.split("/")[0]
        where = f"directly under {split}/ ({split}/<class>/<image>)"
    else:
        where = "directly in the dataset folder (root/<class>/<image>)"
    return (
        f"; the only class folder found is '{folder}', whose images sit in its sub-folders "
        f"({shown}): class folders belong {where}, so '{folder.split('/')[-1]}' was read as "
        "one class; move its sub-folders up one level and run `pomlia data add` again"
    )


def _print_reading(meta: dict[str, Any]) -> None:
    """Notes and warnings on how the source's labels, classes and images were read: the
    sources' own (``meta["source"]["label_notes"]``: one-hot labels, a missing-label marker),
    an ordinal task whose class folders are in alphabetical order, and images that are not
    square (kept: fingerprints take them, but no task can be made of them)."""
    from rich.markup import escape

    source = meta.get("source") or {}
    for note in source.get("label_notes") or []:
        level = "warning" if note.get("level") == "warning" else "note"
        err_console.print(f"[yellow]{level}:[/] {escape(str(note.get('text')))}", highlight=False)
    if (
        meta.get("task_type") == "ordinal-regression"
        and source.get("class_order") == "alphabetical"
    ):
        names = [str(n) for n in meta.get("class_names", [])]
        err_console.print(
            "[yellow]warning:[/] an ordinal task, but its class folders are ordered "
            f"alphabetically ({escape(', '.join(names[:10]))}{', ...' if len(names) > 10 else ''}"
            "): the order is the classes' rank; to set it, pass --class-names with the folder "
            "names from lowest to highest (or name the folders by integers, which are ordered "
            "by value)",
            highlight=False,
        )
    height, width = meta.get("height"), meta.get("width")
    if isinstance(height, int) and isinstance(width, int) and height != width:
        err_console.print(
            f"[yellow]warning:[/] the images are {height} px high and {width} px wide: "
            "`pomlia task add` refuses this version (the model card, `model export` and the "
            "server take square images only; fingerprints and `similar` take any size); crop "
            "or pad them to a square and add the data set again",
            highlight=False,
        )
