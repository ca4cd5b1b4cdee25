"""Which files of an image folder are images, which are skipped, and which class folder names
are refused.

- **System files** (``Thumbs.db``, ``ehthumbs.db``, ``desktop.ini``, any hidden ``.name``
  such as ``.DS_Store`` and AppleDouble ``._x.png``) are skipped without a word.
- **Other files** (``notes.txt``, ``labels.csv``, ``README.md``: any suffix that is neither an
  image suffix we read nor :data:`UNREAD_IMAGE_SUFFIXES`) are skipped; the image folder
  source records them (count and the first :data:`NAMED_SKIPPED`) and ``data add`` names
  them in a warning.
- **Images of a format we do not read** (``.bmp``, ``.dcm``, ...) are refused: skipping them
  would drop data the user meant to ingest.
- **Class folder names** that differ only in case (``Benign`` and ``benign``) or that hold a
  control character (a newline breaks tables and the grid's text layout) are refused.
- **Symlinks** (to files or folders, at any depth) are followed when what they point to lies
  inside the image folder; those that point outside it, are broken, or point to a folder they
  sit in (a loop, ``ln -s .. loop``) are skipped: the image folder source records them
  (count and the first :data:`NAMED_SKIPPED`, with their targets) and ``data add`` names
  them in a warning. (An image outside the folder would be ingested while the version names
  only the folder; a loop would repeat its images for ever.)
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from pomlia_hpc.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: Image formats an image folder does not read: refused, not skipped (they hold data).
UNREAD_IMAGE_SUFFIXES = (
    ".bmp",
    ".gif",
    ".webp",
    ".jp2",
    ".j2k",
    ".heic",
    ".dcm",
    ".dicom",
    ".nii",
    ".nrrd",
    ".mha",
    ".mhd",
    ".svs",
    ".ndpi",
    ".czi",
)
#: Names (any case) of files operating systems leave in folders: skipped silently.
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini"})
#: How many skipped files the version's meta names (all are counted).
NAMED_SKIPPED = 20


def is_system(path: Path) -> bool:
    """Whether ``path`` is a hidden file or folder (``.DS_Store``, ``._x.png``) or a system
    file (:data:`SYSTEM_FILES`)."""
    return path.name.startswith(".") or path.name.lower() in SYSTEM_FILES


def is_other_file(path: Path) -> bool:
    """Whether ``path`` is a file that is no image at all (``notes.txt``): skipped, named."""
    suffix = path.suffix.lower()
    return (
        path.is_file()
        and not is_system(path)
        and suffix not in IMAGE_SUFFIXES
        and suffix not in UNREAD_IMAGE_SUFFIXES
    )


def hidden_under(path: Path, root: Path) -> bool:
    """Whether any part of ``path`` below ``root`` is hidden or a system file."""
    return any(is_system(Path(p)) for p in path.relative_to(root).parts)


def _real(path: Path) -> Path:
    """``path`` with every symlink resolved (``os.path.realpath``: a loop does not raise)."""
    return Path(os.path.realpath(path))


def skipped_symlink(path: Path, root: Path, chain: tuple[Path, ...] = ()) -> str | None:
    """Why ``path``, a symlink in image folder ``root``, is skipped (``"outside the
    folder"``, ``"broken"`` or ``"a loop"``); ``None`` when it is no symlink or is followed.
    ``chain``: the real folders a walk went through to reach it (a loop may take two links)."""
    if not path.is_symlink():
        return None
    target = _real(path)
    if not target.exists():
        return "broken"
    if not target.is_relative_to(_real(root)):
        return "outside the folder"
    if target.is_dir() and any(d.is_relative_to(target) for d in (_real(path.parent), *chain)):
        return "a loop"
    return None


def walk_files(folder: Path, root: Path, skipped: list[str] | None = None) -> list[Path]:
    """The files under ``folder`` (in image folder ``root``), at any depth, sorted; hidden
    and system files and folders are left out, and symlinks are followed or skipped by
    :func:`skipped_symlink`. The skipped ones are added to ``skipped`` (when given) as
    ``'<path relative to root> -> <link text> (<why>)'``."""

    def visit(d: Path, chain: tuple[Path, ...]) -> Iterator[Path]:
        for e in d.iterdir():
            if is_system(e):
                continue
            why = skipped_symlink(e, root, chain)
            if why is not None:
                if skipped is not None:
                    rel = e.relative_to(root).as_posix()
                    skipped.append(f"{rel} -> {e.readlink()} ({why})")
            elif e.is_dir():
                yield from visit(e, (*chain, _real(e)))
            elif e.is_file():  # not a socket or FIFO
                yield e

    return sorted(visit(folder, (_real(folder),)))


def visible_entries(path: Path, root: Path) -> list[Path]:
    """The entries of folder ``path`` (in image folder ``root``), sorted, but hidden and
    system files and the symlinks :func:`skipped_symlink` skips."""
    return sorted(
        p for p in path.iterdir() if not is_system(p) and skipped_symlink(p, root) is None
    )


def other_files(root: Path) -> list[str]:
    """The files under ``root`` that are no image (:func:`is_other_file`), as paths relative
    to ``root``, sorted; hidden folders, system files and skipped symlinks are left out."""
    return [f.relative_to(root).as_posix() for f in walk_files(root, root) if is_other_file(f)]


def skipped_symlinks(root: Path) -> list[str]:
    """The symlinks under image folder ``root`` that are skipped, described as
    :func:`walk_files` does, sorted."""
    skipped: list[str] = []
    walk_files(root, root, skipped)
    return sorted(skipped)


def check_image_suffix(path: Path) -> None:
    """Refuse an image of a format we do not read (:data:`UNREAD_IMAGE_SUFFIXES`)."""
    if path.suffix.lower() in UNREAD_IMAGE_SUFFIXES:
        raise InputError(
            f"file '{path}' is a {path.suffix.lower()} image, which image folders do not read: "
            f"expected one of {', '.join(IMAGE_SUFFIXES)} (convert it, or move it out)"
        )


def check_class_names(root: Path, class_dirs: list[Path]) -> None:
    """Refuse class folders (under image folder ``root``) whose name holds a control
    character, or whose names differ only in case, or only in Unicode form in one folder
    (NFC / NFD): one error naming the folder(s)."""
    for d in class_dirs:
        bad = [c for c in d.name if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
        if bad:
            raise InputError(
                f"class folder {d.relative_to(root).as_posix()!r} in image folder '{root}' "
                f"has a control character ({bad[0]!r}) in its name: expected a name without "
                "newlines, tabs or other control characters (rename the folder)"
            )
    # NFC first: a folder copied from a Mac spells "ä" decomposed (NFD). Two such folders
    # side by side are two folders of one class and are refused; the same name in two forms
    # in two split folders is one class. Each rule has its own key, so a name seen in an
    # earlier split cannot hide a clash of two folders in one parent.
    beside: dict[tuple[Path, str], Path] = {}
    across: dict[str, Path] = {}
    for d in class_dirs:
        key = unicodedata.normalize("NFC", d.name).casefold()
        first = beside.setdefault((d.parent, key), d)
        if first.name == d.name:
            first = across.setdefault(key, d)
        if first.name == d.name:
            continue
        same = unicodedata.normalize("NFC", first.name) == unicodedata.normalize("NFC", d.name)
        if same and first.parent != d.parent:
            continue  # one class in two splits, its name in two Unicode forms: read as one
        _refuse_twins(root, first, d, same)


def _refuse_twins(root: Path, first: Path, d: Path, same_nfc: bool) -> None:
    how = "in case"
    if same_nfc:  # they print alike: the escapes tell them apart
        how = f"in Unicode form (NFC / NFD: {first.name!a}, {d.name!a})"
    raise InputError(
        f"class folders '{first.relative_to(root).as_posix()}' and "
        f"'{d.relative_to(root).as_posix()}' in image folder '{root}' differ only {how}: "
        "expected one folder per class (rename one, or merge their images)"
    )
