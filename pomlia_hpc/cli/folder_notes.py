"""The warnings and notes ``pomlia data add`` prints on stderr about how an image folder
was read: its layout (classes named like a split, empty split folders) and the files it
skipped (no images, symlinks not followed, unreadable images)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from pomlia_hpc.cli.app import err_console


def print_folder_notes(source: dict[str, Any]) -> None:
    """Notes on how an image folder's layout was read: classes named like a split (no train
    folder, so not a split layout) and val/test folders without files (taken as missing)."""
    named = source.get("split_named_classes") or []
    if named:
        err_console.print(
            f"[yellow]note:[/] class folder(s) {escape(', '.join(repr(c) for c in named))} named "
            "like a split folder: treated as a class; a split layout needs a train/ folder"
        )
    for split, folder in (source.get("empty_split_folders") or {}).items():
        carved = source.get(f"{split}_fraction")
        how = (
            f"carved from train with --{split}-fraction {carved}"
            if carved
            else f"--{split}-fraction F carves it from train"
        )
        err_console.print(
            f"[yellow]note:[/] split folder '{escape(str(folder))}' holds no file: taken as "
            f"missing ({how})"
        )


def print_skipped_files(source: dict[str, Any]) -> None:
    """Warnings naming the files of an image folder that were skipped: files that are no
    image and symlinks not followed (count and the first few of each) and, with
    --skip-unreadable, each unreadable image."""
    for key, what in (
        ("skipped_other_files", "file(s) that are not images"),
        ("skipped_symlinks", "symlink(s) pointing outside the folder, broken or looping"),
    ):
        skipped = source.get(key) or {}
        if skipped:
            names = [str(f) for f in skipped.get("files", [])][:5]
            more = int(skipped["count"]) - len(names)
            err_console.print(
                f"[yellow]warning:[/] skipped {skipped['count']} {what}: "
                + escape(", ".join(f"'{n}'" for n in names))
                + (f" and {more} more (`data show` lists up to 20)" if more > 0 else "")
            )
    unreadable = source.get("skipped_unreadable") or {}
    if unreadable:
        err_console.print(
            f"[yellow]warning:[/] skipped {unreadable['count']} unreadable image file(s) "
            "(--skip-unreadable):"
        )
        for line in unreadable.get("files", []):
            err_console.print(f"  {line}", markup=False, highlight=False)


def print_pixel_notes(source: dict[str, Any]) -> None:
    """A warning when a 16-bit data set's maximum is an extreme outlier (its images were all
    scaled by it, so most of them are nearly black), naming where it is; a note when an RGBA
    array's alpha channel was dropped, a warning when that 4th channel varied (it may have
    been data)."""
    outlier = source.get("intensity_outlier") or {}
    if outlier:
        top, value, at = outlier["max"], outlier["value"], escape(str(outlier["at"]))
        err_console.print(
            f"[yellow]warning:[/] the largest 16-bit value, {top:g} ({at}), is "
            f"{top / max(value, 1):.0f} times the {outlier['percentile']:g}th percentile "
            f"({value}): every image was scaled by it (0..{top:g} -> 0..255), so most pixels "
            f"are stored in 0..{255 * value / top + 0.5:.0f}. If it is a hot pixel or a "
            "broken file, fix or remove it (or clip the values, e.g. np.minimum(x, "
            f"{value})) and run `pomlia data add` again",
            highlight=False,
        )
    if source.get("alpha_varies"):
        err_console.print(
            "[yellow]warning:[/] the images have 4 channels whose 4th takes more than one "
            "value: it was taken as alpha and dropped (stored as RGB), as for RGBA image files. "
            "If it is a 4th channel of data (a fluorescence channel), it was lost: keep 3 "
            "channels in the file (or each channel as its own grey data set) and run "
            "`pomlia data add` again",
            highlight=False,
        )
    elif source.get("alpha_dropped"):
        err_console.print(
            "[yellow]note:[/] the images have 4 channels (RGBA): the alpha channel was dropped "
            "(stored as RGB), as for RGBA image files"
        )
