"""How an image folder is laid out: which of its folders are classes, which are splits.

Three layouts are read (:mod:`.folder` has the rules for the files in them)::

    root/<class>/<image>            class folders, split by path hashes
    root/<split>/<class>/<image>    split folders holding class folders
    root/<class>/<split>/<image>    class folders holding split folders

:func:`read_layout` tells them apart and lists, per split, the folder of each class's images.
Each class folder of a split carries the path its files are hashed by (:attr:`ClassFolder.key`):
the path the split layout gives it (``<split folder>/<class>``) in both split layouts, so the
same images under ``root/<class>/<split>/`` and under ``root/<split>/<class>/`` give the same
rows, the same split and the same version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pomlia_hpc.data.sources.folder_files import is_other_file, visible_entries, walk_files
from pomlia_hpc.data.store import SPLITS
from pomlia_hpc.errors import InputError

SPLIT_FOLDER_NAMES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
"""Split folder names (any case), and the split each one is."""

CLASS_FOLDERS = "class folders"
SPLIT_FOLDERS = "split folders"
CLASS_SPLIT_FOLDERS = "class folders of split folders"
"""The layouts, as ``meta["source"]["layout"]`` records them."""


@dataclass(frozen=True)
class ClassFolder:
    """The folder of one class's images in one split."""

    split: str
    """train, val or test; "" in a class-folder layout (all its rows are carved)."""
    name: str
    """The class."""
    folder: Path
    key: str
    """The path (relative to the root) its files' paths are hashed under: the split layout's
    ``<split folder>/<class>``, the class's folder name in a class-folder layout."""


@dataclass
class Layout:
    """What :func:`read_layout` found in an image folder."""

    kind: str
    """:data:`CLASS_FOLDERS`, :data:`SPLIT_FOLDERS` or :data:`CLASS_SPLIT_FOLDERS`."""
    splits: dict[str, str] = field(default_factory=dict)
    """The split folders' names by split (split layouts; empty ones left out)."""
    empty_splits: dict[str, str] = field(default_factory=dict)
    """val / test folders without any file, by split: taken as missing (carved from train)."""
    class_folders: list[ClassFolder] = field(default_factory=list)
    named: list[Path] = field(default_factory=list)
    """The folders named as classes (their names checked; skipped when they hold no image)."""


def visible(path: Path, root: Path) -> list[Path]:
    """The entries of ``path`` (in image folder ``root``) but hidden and system files and
    skipped symlinks (:func:`~.folder_files.visible_entries`), sorted."""
    return visible_entries(path, root)


def has_files(folder: Path, root: Path) -> bool:
    """Whether ``folder`` (in image folder ``root``) holds any image file, at any depth
    (hidden, system and other files and skipped symlinks do not count)."""
    return any(not is_other_file(f) for f in walk_files(folder, root))


def names(paths: list[Path]) -> str:
    """``'a', 'b'`` (the first five names, then how many more)."""
    shown = ", ".join(f"'{p.name}'" for p in paths[:5])
    return shown + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def split_aliases() -> str:
    """``train (train/training), val (val/valid/validation/dev), test (test/testing)``."""
    return ", ".join(
        f"{s} ({'/'.join(k for k, v in SPLIT_FOLDER_NAMES.items() if v == s)})" for s in SPLITS
    )


def expected_layout() -> str:
    """The layouts accepted, for an error message: ``expected ...``."""
    return (
        "expected class folders only (root/<class>/<image>), split folders only "
        "(root/<split>/<class>/<image>) or class folders that each hold only split folders "
        f"(root/<class>/<split>/<image>), splits {split_aliases()}"
    )


def _by_split(path: Path, where: str, named: list[Path]) -> dict[str, Path]:
    """``named`` (split folders in ``where``) by split; a split named twice is refused."""
    out: dict[str, Path] = {}
    for p in named:
        split = SPLIT_FOLDER_NAMES[p.name.lower()]
        if split in out:
            raise InputError(
                f"{where} has two folders for the {split} split, '{out[split].name}' and "
                f"'{p.name}': expected one"
            )
        out[split] = p
    return {s: out[s] for s in SPLITS if s in out}


def _has_train(named: list[Path]) -> bool:
    return any(SPLIT_FOLDER_NAMES[p.name.lower()] == "train" for p in named)


def _split_named(folder: Path, root: Path) -> tuple[list[Path], list[Path]]:
    """The split-named sub-folders of ``folder`` (in image folder ``root``), and its other
    entries (files that are no image, skipped anyway, left out)."""
    entries = [e for e in visible(folder, root) if not is_other_file(e)]
    named = [e for e in entries if e.is_dir() and e.name.lower() in SPLIT_FOLDER_NAMES]
    return named, [e for e in entries if e not in named]


def split_folders(path: Path) -> dict[str, Path]:
    """The split folders of image folder ``path`` by split (train, val, test), or {} when
    its top level holds class folders. A split layout needs a train folder at the top (a
    class-folder dataset may well have classes named ``Test`` or ``dev``); with one, a top
    level that mixes split folders with other folders or files, or names one split twice
    (``val`` and ``valid``), is refused."""
    entries = visible(path, path)
    named = [p for p in entries if p.is_dir() and p.name.lower() in SPLIT_FOLDER_NAMES]
    if not _has_train(named):
        return {}
    others = [p for p in entries if p not in named and not is_other_file(p)]
    if others:
        raise InputError(
            f"image folder '{path}' mixes split folders ({names(named)}) with other "
            f"folders or files ({names(others)}) at its top level: {expected_layout()}"
        )
    return _by_split(path, f"image folder '{path}'", named)


def class_split_folders(path: Path) -> dict[Path, dict[str, Path]]:
    """The split folders of each class folder of image folder ``path`` (a class-folder
    layout whose classes hold split folders, ``root/<class>/<split>/<image>``), or {} when
    no class folder holds a train folder (nested folders of a class are then just folders).
    With one, every class folder that holds images must hold only split folders, under the
    same names: a mix (a class folder with images or other folders, beside or instead of
    split folders) is refused, naming the first such folder. Class folders without images
    are left out."""
    tops = [p for p in visible(path, path) if p.is_dir()]
    parts = {p: _split_named(p, path) for p in tops}
    with_train = next((p for p in tops if _has_train(parts[p][0])), None)
    if with_train is None:
        return {}
    out: dict[Path, dict[str, Path]] = {}
    for p in tops:
        named, rest = parts[p]
        rest = [e for e in rest if e.is_file() or has_files(e, path)]
        if rest:
            if named:
                beside = f"beside its split folders ({names(named)})"
            else:
                beside = (
                    f"while class folder '{with_train.name}' holds split folders "
                    f"({names(parts[with_train][0])})"
                )
            raise InputError(
                f"image folder '{path}' mixes layouts: class folder '{p.name}' holds images "
                f"or folders that are no split folders ({names(rest)}) {beside}: expected "
                "either every class folder holding only split folders "
                f"(root/<class>/<split>/<image>, splits {split_aliases()}) or none "
                "(root/<class>/<image>)"
            )
        if has_files(p, path):
            out[p] = _by_split(path, f"class folder '{p.name}' in image folder '{path}'", named)
    _same_split_names(path, out)
    return out


def _same_split_names(path: Path, found: dict[Path, dict[str, Path]]) -> None:
    """Refuse class folders that name one split differently (``a/val``, ``b/valid``): the
    split layout they stand for would have both at its top, one split twice."""
    first: dict[str, Path] = {}
    for splits in found.values():
        for split, folder in splits.items():
            seen = first.setdefault(split, folder)
            if seen.name != folder.name:
                raise InputError(
                    f"image folder '{path}': class folders '{seen.parent.name}' and "
                    f"'{folder.parent.name}' name the {split} split differently ('{seen.name}', "
                    f"'{folder.name}'): expected one name for each split in every class folder"
                )


def _class_dirs(root: Path, split_name: str, top: Path) -> list[Path]:
    """The class folders under ``root`` (image folder ``top``, or one split folder of it)."""
    dirs = []
    for cdir in visible(root, top):
        if cdir.is_dir():
            dirs.append(cdir)
        elif is_other_file(cdir):
            continue  # notes.txt beside the class folders: skipped, and `data add` names it
        elif split_name:
            raise InputError(
                f"'{cdir}' is a file in split folder '{root.name}': expected one sub-folder "
                f"per class inside each split folder ({root.name}/<class>/<image>)"
            )
        else:
            raise InputError(
                f"'{cdir}' is a file in the dataset folder: expected one sub-folder per class "
                f"(root/<class>/<image>) or split folders (root/<split>/<class>/<image>)"
            )
    return dirs


def _empty(roots: dict[str, list[Path]], top: Path) -> list[str]:
    """The val / test splits whose folders (in image folder ``top``) hold no file (taken as
    missing, so ``--val-fraction`` / ``--test-fraction`` can carve them from train)."""
    return [
        s for s in ("val", "test") if s in roots and not any(has_files(f, top) for f in roots[s])
    ]


def read_layout(path: Path) -> Layout:
    """The layout of image folder ``path`` and its class folders per split (see the module
    docstring); a layout that is none of the three is refused in one line saying which
    folder breaks it and the layouts expected."""
    tops = split_folders(path)
    if tops:
        empty = _empty({s: [p] for s, p in tops.items()}, path)
        out = Layout(SPLIT_FOLDERS, {s: p.name for s, p in tops.items() if s not in empty})
        out.empty_splits = {s: tops[s].name for s in empty}
        for split, root in tops.items():
            if split in empty:
                continue
            for cdir in _class_dirs(root, split, path):
                key = f"{root.name}/{cdir.name}"
                out.class_folders.append(ClassFolder(split, cdir.name, cdir, key))
                out.named.append(cdir)
        return out
    classes = _class_dirs(path, "", path)  # refuses image files at the top, as before
    by_class = class_split_folders(path)
    if not by_class:
        folders = [ClassFolder("", c.name, c, c.name) for c in classes]
        return Layout(CLASS_FOLDERS, class_folders=folders, named=classes)
    roots: dict[str, list[Path]] = {}
    for splits in by_class.values():
        for split, folder in splits.items():
            roots.setdefault(split, []).append(folder)
    empty = _empty(roots, path)
    out = Layout(CLASS_SPLIT_FOLDERS, named=classes)
    out.splits = {s: roots[s][0].name for s in SPLITS if s in roots and s not in empty}
    out.empty_splits = {s: roots[s][0].name for s in empty}
    for cdir, splits in by_class.items():
        for split, folder in splits.items():
            if split not in empty:
                key = f"{folder.name}/{cdir.name}"  # as root/<split>/<class>/ would be
                out.class_folders.append(ClassFolder(split, cdir.name, folder, key))
    return out
