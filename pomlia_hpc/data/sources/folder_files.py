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
"""

from __future__ import annotations

import unicodedata
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


def other_files(root: Path) -> list[str]:
    """The files under ``root`` that are no image (:func:`is_other_file`), as paths relative
    to ``root``, sorted; hidden folders and system files are left out."""
    return sorted(
        f.relative_to(root).as_posix()
        for f in root.rglob("*")
        if not hidden_under(f, root) and is_other_file(f)
    )


def check_image_suffix(path: Path) -> None:
    """Refuse an image of a format we do not read (:data:`UNREAD_IMAGE_SUFFIXES`)."""
    if path.suffix.lower() in UNREAD_IMAGE_SUFFIXES:
        raise InputError(
            f"file '{path}' is a {path.suffix.lower()} image, which image folders do not read: "
            f"expected one of {', '.join(IMAGE_SUFFIXES)} (convert it, or move it out)"
        )


def check_class_names(root: Path, class_dirs: list[Path]) -> None:
    """Refuse class folders (under image folder ``root``) whose name holds a control
    character, or whose names differ only in case: one error naming the folder(s)."""
    for d in class_dirs:
        bad = [c for c in d.name if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
        if bad:
            raise InputError(
                f"class folder {d.relative_to(root).as_posix()!r} in image folder '{root}' "
                f"has a control character ({bad[0]!r}) in its name: expected a name without "
                "newlines, tabs or other control characters (rename the folder)"
            )
    seen: dict[str, Path] = {}
    for d in class_dirs:
        first = seen.setdefault(d.name.casefold(), d)
        if first.name != d.name:
            raise InputError(
                f"class folders '{first.relative_to(root).as_posix()}' and "
                f"'{d.relative_to(root).as_posix()}' in image folder '{root}' differ only in "
                "case: expected one folder per class (rename one, or merge their images)"
            )
