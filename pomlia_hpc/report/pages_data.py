"""Report pages about data: datasets (sample grids, explicit fingerprints) and fingerprints
(latent maps, the dataset similarity heatmap, pipeline figures and clustering)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from pomlia_hpc.registry import Dataset, DatasetVersion, Encoder, FingerprintSet, Registry
from pomlia_hpc.report import figures
from pomlia_hpc.report.html import esc, png, table
from pomlia_hpc.workspace import Workspace

#: Datasets with more versions than this show only their newest ones.
MAX_VERSIONS = 3


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
    seen: dict[str, int] = {}
    table_rows, grids = [], []
    for name, v in rows:
        seen[name] = seen.get(name, 0) + 1
        if v.id == current.get(name) and Path(v.store_path).exists():
            grids.append(_grid(name, v))
        if seen[name] > MAX_VERSIONS:
            continue
        fp = v.fingerprint or {}
        size = fp.get("image_size") or ["?", "?"]
        table_rows.append(
            [
                name,
                v.version,
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
    body += "<h2>Sample grids (current version; one row per class)</h2>"
    body += f"<div class='grid'>{''.join(grids)}</div>"
    return body


def _sets(registry: Registry) -> dict[str, list[tuple[str, FingerprintSet]]]:
    """Encoder name → its complete fingerprint sets with dataset refs."""
    with registry.session() as s:
        q = (
            select(Encoder.name, Dataset.name, DatasetVersion.version, FingerprintSet)
            .join(FingerprintSet, FingerprintSet.encoder_id == Encoder.id)
            .join(DatasetVersion, DatasetVersion.id == FingerprintSet.dataset_version_id)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(FingerprintSet.status == "complete")
            .order_by(Encoder.id, Dataset.name)
        )
        out: dict[str, list[tuple[str, FingerprintSet]]] = {}
        for enc, ds, ver, fs in s.execute(q):
            s.expunge(fs)
            out.setdefault(enc, []).append((f"{ds}@{ver}", fs))
    return out


def _labels(refs: list[str]) -> list[str]:
    names = [r.split("@")[0] for r in refs]
    return [n if names.count(n) == 1 else r for n, r in zip(names, refs, strict=True)]


def fingerprints_page(registry: Registry, workspace: Workspace, folder: Path) -> str | None:
    """Per encoder: its training, latent maps (Figures 5/6), the heatmap of distances between
    dataset fingerprints (mean embeddings); then the pipelines' clustering results."""
    from pomlia_hpc.fingerprint.plots import plot_encoder_latent

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
                    float(e.loss_curve[-1]) if e.loss_curve else "",
                    len(sets.get(e.name, [])),
                ]
                for e in encoders
            ],
        )
    )
    for enc, members in sets.items():
        refs = [r for r, _fs in members]
        labels = _labels(refs)
        means = np.stack([np.asarray(fs.mean, float) for _r, fs in members])
        dist = np.sqrt(((means[:, None, :] - means[None, :, :]) ** 2).sum(-1))
        parts.append(f"<h2>Encoder {esc(enc)}</h2><div class='grid'>")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                scatter, mean_plot = plot_encoder_latent(registry, enc, refs, Path(tmp))
                for p, alt in ((scatter, "latent scatter"), (mean_plot, "latent means")):
                    parts.append(
                        f"<div class='card'>{png(figures.image_bytes(str(p)), alt, 520)}</div>"
                    )
            except Exception as exc:
                parts.append(f"<div class='card'>latent map unavailable: {esc(exc)}</div>")
        title = f"distance between dataset fingerprints (mean embeddings), encoder {enc}"
        parts.append(
            f"<div class='card'>{png(figures.heatmap(dist, labels, title), title, 560)}</div>"
        )
        parts.append("</div>")
    parts += _clustering(workspace)
    return "".join(parts)


def _clustering(workspace: Workspace) -> list[str]:
    """Results of the pipelines' ``figures`` stage (clustering of fingerprints vs groups)."""
    out: list[str] = []
    root = workspace.path("reports", "pipelines")
    for f in sorted(root.glob("*/clustering.json")) if root.is_dir() else []:
        data = json.loads(f.read_text())
        out.append(f"<h2>Pipeline {esc(f.parent.name)}: fingerprint groups</h2>")
        out.append(
            f"<p>Agglomerative clustering ({esc(data['linkage'])} linkage) of the dataset "
            f"fingerprints of encoder <strong>{esc(data['encoder'])}</strong> "
            f"(d = {esc(data['latent_dim'])}) against the given groups: adjusted Rand index "
            f"<strong>{data['ari']:.3f}</strong>; explicit-fingerprint baseline "
            f"{data['baseline_ari']:.3f}.</p>"
        )
        groups = {n: i + 1 for i, g in enumerate(data["groups"]) for n in g}
        out.append(
            table(
                ["dataset", "group", "cluster (learned)", "cluster (explicit)"],
                [
                    [n, groups.get(n, ""), c, data["baseline_clusters"].get(n, "")]
                    for n, c in sorted(
                        data["clusters"].items(), key=lambda kv: groups.get(kv[0], 0)
                    )
                ],
            )
        )
    return out
