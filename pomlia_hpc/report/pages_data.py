"""Report pages about data: datasets (sample grids, explicit fingerprints) and fingerprints
(latent maps, the dataset similarity heatmap, pipeline figures and clustering)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from pomlia_hpc.registry import Dataset, DatasetVersion, Encoder, FingerprintSet, Registry
from pomlia_hpc.report import figures
from pomlia_hpc.report.html import cut, esc, metric_text, png, table
from pomlia_hpc.workspace import Workspace

if TYPE_CHECKING:  # the fingerprint room is imported when a page needs it (torch)
    from pomlia_hpc.fingerprint.usable import LeftOut

#: Datasets with more versions than this show only their current one and their newest others.
MAX_VERSIONS = 3

#: The marker of the version a dataset's plain name means (``pomlia data``, ``similar``, a
#: task's ``--dataset NAME``: :func:`~pomlia_hpc.data.store.current_versions`).
CURRENT = "current"


def _versions(registry: Registry) -> list[tuple[str, DatasetVersion]]:
    with registry.session() as s:
        q = (
            select(Dataset.name, DatasetVersion)
            .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
            .order_by(Dataset.name, DatasetVersion.id.desc())
        )
        rows = [(name, v) for name, v in s.execute(q)]
        for _n, v in rows:
            s.expunge(v)
    return rows


def _balance(fp: dict[str, Any]) -> str:
    bal = (fp.get("class_balance") or {}).get("all") or {}
    parts = [f"{k} {v:.3g}" for k, v in bal.items() if isinstance(v, int | float)]
    return ", ".join(parts[:3])


def _intensity(fp: dict[str, Any]) -> str:
    chans = fp.get("intensity") or []
    return "; ".join(f"{c.get('mean', 0):.0f}±{c.get('std', 0):.0f}" for c in chans)


def _grid(name: str, v: DatasetVersion) -> str:
    """The card of version ``v``'s sample grid (or of why there is none)."""
    from pomlia_hpc.data.grid import sample_grid
    from pomlia_hpc.data.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        try:
            out = sample_grid(open_store(v.store_path), Path(tmp) / "g.png", per_class=6)
        except Exception as exc:  # one unreadable store must not stop the report
            return f"<div class='card'>{esc(name)}: no grid ({esc(exc)})</div>"
        return (
            f"<div class='card'><strong>{esc(name)}</strong>@{esc(v.version)}<br>"
            f"{png(figures.image_bytes(str(out)), f'samples of {name}')}</div>"
        )


def datasets_page(registry: Registry, workspace: Workspace, folder: Path) -> str | None:
    """Every dataset version with its explicit fingerprint, and a sample grid per dataset."""
    from pomlia_hpc.data.store import current_versions

    rows = _versions(registry)
    if not rows:
        return None
    current = {name: v.id for name, v in current_versions(registry).items()}
    listed, hidden = _listed(rows, current)
    table_rows, grids = [], []
    for name, v in rows:
        if v.id == current.get(name) and Path(v.store_path).exists():
            grids.append(_grid(name, v))
        if v.id not in listed:
            continue
        fp = v.fingerprint or {}
        size = fp.get("image_size") or ["?", "?"]
        table_rows.append(
            [
                name,
                v.version,
                CURRENT if v.id == current.get(name) else "",
                v.n_images,
                f"{size[0]}x{size[1]}x{fp.get('channels', '?')}",
                str(fp.get("task_type", "")),
                fp.get("n_classes", ""),
                ", ".join(f"{k} {n}" for k, n in (fp.get("counts") or {}).items()),
                _intensity(fp),
                _balance(fp),
            ]
        )
    body = "<h2>Versions and explicit fingerprints</h2>" + table(
        [
            "dataset",
            "version",
            CURRENT,
            "images",
            "size",
            "task",
            "classes",
            "splits",
            "intensity mean±std (per channel)",
            "class balance",
        ],
        table_rows,
    )
    body += (
        f"<p class='muted'>{CURRENT}: the version the plain dataset name means (the one last "
        "added), which every command uses unless given <code>name@version</code>."
        + (f" {hidden} older version(s) not listed." if hidden else "")
        + "</p>"
    )
    body += "<h2>Sample grids (current version; one row per class)</h2>"
    body += f"<div class='grid'>{''.join(grids)}</div>"
    return body


def _listed(
    rows: list[tuple[str, DatasetVersion]], current: dict[str, int]
) -> tuple[set[int], int]:
    """The version ids the table lists (of each dataset its current version and its newest
    others, :data:`MAX_VERSIONS` in all; ``rows`` newest first) and how many it leaves out."""
    by_name: dict[str, list[int]] = {}
    for name, v in rows:
        by_name.setdefault(name, []).append(v.id)
    listed: set[int] = set()
    for name, ids in by_name.items():
        keep = [i for i in ids if i == current.get(name)]  # the current one, however old
        keep += [i for i in ids if i not in keep][: MAX_VERSIONS - len(keep)]
        listed.update(keep)
    return listed, len(rows) - len(listed)


def _sets(registry: Registry) -> dict[str, list[tuple[str, FingerprintSet]]]:
    """Encoder name → its complete fingerprint sets with dataset refs (by dataset, newest
    version first)."""
    with registry.session() as s:
        q = (
            select(Encoder.name, Dataset.name, DatasetVersion.version, FingerprintSet)
            .join(FingerprintSet, FingerprintSet.encoder_id == Encoder.id)
            .join(DatasetVersion, DatasetVersion.id == FingerprintSet.dataset_version_id)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(FingerprintSet.status == "complete")
            .order_by(Encoder.id, Dataset.name, DatasetVersion.id.desc())
        )
        out: dict[str, list[tuple[str, FingerprintSet]]] = {}
        for enc, ds, ver, fs in s.execute(q):
            s.expunge(fs)
            out.setdefault(enc, []).append((f"{ds}@{ver}", fs))
    return out


def fingerprints_page(registry: Registry, workspace: Workspace, folder: Path) -> str | None:
    """Per encoder: its training, its fingerprint sets (the current version marked), latent
    maps (Figures 5/6) and the heatmap of distances between dataset fingerprints (the distance
    ``pomlia similar`` ranks by) of each dataset's current version, as ``pomlia plot latent``
    and ``similar`` compare them; then the pipelines' clustering results."""
    from pomlia_hpc.data.store import current_versions

    sets = _sets(registry)
    with registry.session() as s:
        encoders = list(s.scalars(select(Encoder).order_by(Encoder.id)))
        for e in encoders:
            s.expunge(e)
    if not encoders:
        return None
    parts = ["<h2>Encoders</h2>"]
    parts.append(
        table(
            ["encoder", "d", "datasets", "epochs", "final loss", "extracted sets"],
            [
                [
                    e.name,
                    (e.config.get("encoder") or {}).get("latent_dim", ""),
                    len(e.dataset_version_ids),
                    len(e.loss_curve),
                    metric_text(e.loss_curve[-1] if e.loss_curve else None, 4),
                    len(sets.get(e.name, [])),
                ]
                for e in encoders
            ],
        )
    )
    current = {v.id for v in current_versions(registry).values()}
    for enc, members in sets.items():
        parts += _encoder_section(registry, enc, members, current)
    parts += _clustering(workspace)
    return "".join(parts)


def _encoder_section(
    registry: Registry, enc: str, members: list[tuple[str, FingerprintSet]], current: set[int]
) -> list[str]:
    """Encoder ``enc``'s fingerprint sets (``members``; ``current``: the ids of the versions
    the plain names mean), then its figures of the sets ``pomlia plot latent`` draws by
    default: each dataset's current version (else its newest usable one). Figure 6 only for
    two datasets or more, else its one-line reason where it would be."""
    from pomlia_hpc.fingerprint.candidates import candidates
    from pomlia_hpc.fingerprint.plots import latent_figures
    from pomlia_hpc.fingerprint.ranking import DEFAULT_DISTANCE

    parts = [f"<h2>Encoder {esc(enc)}</h2>"]
    left: list[LeftOut] = []
    cards: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            paths, skipped = latent_figures(registry, enc, None, Path(tmp), left_out=left)
            alts = ["latent scatter", "latent means"]
            cards += [
                f"<div class='card'>{png(figures.image_bytes(str(p)), alt, 520)}</div>"
                for p, alt in zip(paths, alts, strict=False)
            ]
            if skipped:  # the reason stands where the figure would be
                cards.append(f"<div class='card muted'>{esc(skipped)}</div>")
        except Exception as exc:  # one unreadable set must not stop the report
            cards.append(f"<div class='card'>latent map unavailable: {esc(exc)}</div>")
    try:
        plotted = candidates(registry, enc)[0]
    except Exception as exc:
        plotted = []
        cards.append(f"<div class='card'>distances unavailable: {esc(exc)}</div>")
    if plotted:
        labels = [ref.split("@")[0] for _fs, ref in plotted]  # one version per dataset
        try:
            dist = similar_distances(registry, plotted)
            title = (
                f"distance between dataset fingerprints: {DEFAULT_DISTANCE} (as pomlia "
                f"similar ranks), encoder {enc}"
            )
            image = figures.heatmap(
                dist,
                labels,
                title,
                "compared with",
                "query (a row: pomlia similar QUERY)",
            )
            cards.append(f"<div class='card'>{png(image, title, 560)}</div>")
        except Exception as exc:  # an unreadable summary must not stop the report
            cards.append(f"<div class='card'>distances unavailable: {esc(exc)}</div>")
    parts.append(_sets_table(members, current, {fs.id for fs, _r in plotted}, left))
    parts.append(f"<div class='grid'>{''.join(cards)}</div>")
    return parts


def similar_distances(registry: Registry, sets: list[tuple[FingerprintSet, str]]) -> np.ndarray:
    """The distances between the datasets of ``sets`` (``(set, name@version)`` pairs, one per
    dataset) that ``pomlia similar`` ranks by (its default distance, unitless): row i holds
    those of ``pomlia similar`` for dataset i, 0 on the diagonal. Not symmetric in general:
    the combined distance scales its parts by their medians over the datasets a query is
    compared with, which differ from row to row."""
    from pomlia_hpc.fingerprint.ranking import DEFAULT_DISTANCE, fields_for, score
    from pomlia_hpc.fingerprint.similar import load_summary

    need = fields_for(DEFAULT_DISTANCE)
    summaries = [load_summary(registry, fs, ref, need) for fs, ref in sets]
    n = len(summaries)
    out = np.zeros((n, n))
    for i, query in enumerate(summaries):
        others = [j for j in range(n) if j != i]
        if not others:
            continue
        scored = score(query, [summaries[j] for j in others], DEFAULT_DISTANCE)
        out[i, others] = [sc.distance for sc in scored]
    return out


def _sets_table(
    members: list[tuple[str, FingerprintSet]],
    current: set[int],
    plotted: set[int],
    left: list[LeftOut],
) -> str:
    """The table of an encoder's fingerprint sets: which version is current, which the
    figures show, and why the others are not shown. Of each dataset it lists the sets of its
    current version and of the version the figures show, then its newest others,
    :data:`MAX_VERSIONS` in all (a loop that harvests a version a night added a row a night
    for good), and counts the rest."""
    why = {x.set_id: x.why for x in left if x.set_id}
    by_name: dict[str, list[FingerprintSet]] = {}
    for ref, fs in members:  # newest version first within each dataset
        by_name.setdefault(ref.partition("@")[0], []).append(fs)
    listed: set[int] = set()
    for sets in by_name.values():
        keep = [fs.id for fs in sets if fs.id in plotted or fs.dataset_version_id in current]
        keep += [fs.id for fs in sets if fs.id not in keep][: max(0, MAX_VERSIONS - len(keep))]
        listed.update(keep)
    rows = []
    for ref, fs in members:
        if fs.id not in listed:
            continue
        name, _at, version = ref.partition("@")
        shown = (
            "yes"
            if fs.id in plotted
            else f"no: {why[fs.id]}"
            if fs.id in why
            else "no: another version of the dataset is shown"
        )
        rows.append(
            [name, version, CURRENT * (fs.dataset_version_id in current), fs.n_vectors, shown]
        )
    note = (
        f"<p class='muted'>The figures show each dataset once: its {CURRENT} version (the one "
        "its plain name means), else its newest version with usable embeddings, as "
        "<code>pomlia plot latent</code> and <code>pomlia similar</code> do "
        "(<code>pomlia plot latent --all-versions</code> draws every version)."
        + (
            f" {len(members) - len(rows):,} older version(s) not listed (<code>pomlia "
            "fingerprint show NAME@VERSION</code> shows one)."
            if len(rows) < len(members)
            else ""
        )
        + "</p>"
    )
    return table(["dataset", "version", CURRENT, "vectors", "in the figures"], rows) + note


def _clustering(workspace: Workspace) -> list[str]:
    """Results of the pipelines' ``figures`` stage (clustering of fingerprints vs groups); a
    file that cannot be read (damaged, edited, of another format) gets one line saying so in
    its place: it must not stop the report."""
    out: list[str] = []
    root = workspace.path("reports", "pipelines")
    for f in sorted(root.glob("*/clustering.json")) if root.is_dir() else []:
        out.append(f"<h2>Pipeline {esc(f.parent.name)}: fingerprint groups</h2>")
        try:
            out += _clustering_result(json.loads(f.read_bytes()))
        except (OSError, ValueError, LookupError, TypeError, AttributeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            out.append(f"<p class='bad'>{esc(f)} cannot be read ({esc(cut(why, 300))}).</p>")
    return out


def _clustering_result(data: dict[str, Any]) -> list[str]:
    """One pipeline's ``clustering.json`` (``data``) as a sentence and a table."""
    out: list[str] = []
    out.append(
        f"<p>Agglomerative clustering ({esc(data['linkage'])} linkage) of the dataset "
        f"fingerprints of encoder <strong>{esc(data['encoder'])}</strong> "
        f"(d = {esc(data['latent_dim'])}) against the given groups: adjusted Rand index "
        f"<strong>{metric_text(data.get('ari'))}</strong>; explicit-fingerprint baseline "
        f"{metric_text(data.get('baseline_ari'))}.</p>"
    )
    groups = {n: i + 1 for i, g in enumerate(data["groups"]) for n in g}
    out.append(
        table(
            ["dataset", "group", "cluster (learned)", "cluster (explicit)"],
            [
                [n, groups.get(n, ""), c, data["baseline_clusters"].get(n, "")]
                for n, c in sorted(data["clusters"].items(), key=lambda kv: groups.get(kv[0], 0))
            ],
        )
    )
    return out
