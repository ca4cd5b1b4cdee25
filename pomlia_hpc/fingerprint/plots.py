"""The paper's latent-space figures, as PNG files.

* Figure 5 (``latent_scatter.png``): test-split embeddings of each dataset, one colour per
  dataset, with a legend.
* Figure 6 (``latent_means.png``): each dataset's mean embedding, labelled (``pomlia plot
  latent``, the report and the pipeline's ``figures`` stage: only for two datasets or more,
  :func:`latent_figures`).

For ``d = 2`` the latent axes are plotted as they are; for ``d > 2`` both figures use the same
2-D PCA projection, fitted on the pooled test embeddings (axis labels say so). Files are written
to a temporary name and renamed, so a half-drawn PNG never appears.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes

import matplotlib.pyplot as plt
import numpy as np

from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_atomic
from pomlia_hpc.fingerprint.encoders import get_encoder
from pomlia_hpc.fingerprint.similar import candidates, embedding_sample, fingerprint_set
from pomlia_hpc.fingerprint.usable import LeftOut, Unrecorded, left_out_note, unrecorded
from pomlia_hpc.registry import Encoder, Registry

#: Points per dataset in the scatter (evenly spaced test rows).
SCATTER_MAX = 500


def project_2d(
    samples: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], str, np.ndarray, np.ndarray]:
    """Project every sample to 2-D: identity for d <= 2, else PCA on the pooled samples.
    Returns (projected samples, axis-label prefix, centre, axes (d, 2))."""
    pooled = np.concatenate(list(samples.values()))
    d = pooled.shape[1]
    center = np.zeros(d)
    if d <= 2:
        axes = np.eye(d, 2)
        return {k: v @ axes for k, v in samples.items()}, "z", center, axes
    center = pooled.mean(0)
    _u, _s, vt = np.linalg.svd(pooled - center, full_matrices=False)
    axes = vt[:2].T
    return {k: (v - center) @ axes for k, v in samples.items()}, "PC", center, axes


def _png(fig: plt.Figure, path: Path) -> Path:
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    except OSError as exc:
        raise InputError(
            f"figure '{path}' cannot be written ({exc.strerror or exc}): expected a writable folder"
        ) from exc
    finally:
        plt.close(fig)
    return path


def plot_latent(
    samples: dict[str, np.ndarray],
    means: dict[str, np.ndarray],
    out_dir: str | Path,
    title: str = "",
) -> tuple[Path, Path]:
    """Write Figure 5 and Figure 6 for ``samples`` (dataset → (n, d) test embeddings) and
    ``means`` (dataset → (d,) mean embedding); returns the two PNG paths."""
    scatter, mean_plot = _figures(samples, means, Path(out_dir), title, means_min=1)
    assert mean_plot is not None  # means_min=1: drawn whenever there is a dataset
    return scatter, mean_plot


def _figures(
    samples: dict[str, np.ndarray],
    means: dict[str, np.ndarray],
    out: Path,
    title: str,
    *,
    means_min: int,
) -> tuple[Path, Path | None]:
    """Figure 5, and Figure 6 when it has at least ``means_min`` datasets (else None)."""
    if not samples:
        raise InputError("no datasets to plot: expected at least one extracted dataset")
    proj, prefix, center, axes = project_2d(samples)
    colours = plt.get_cmap("tab20" if len(samples) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(7, 6))
    for i, (name, xy) in enumerate(proj.items()):
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, color=colours(i % colours.N), label=name)
    ax.set_xlabel(f"{prefix}1")
    ax.set_ylabel(f"{prefix}2")
    ax.set_title(f"Latent space, test samples{' — ' + title if title else ''}")
    ax.legend(markerscale=3, fontsize=8, loc="best", frameon=True)
    scatter = _png(fig, out / "latent_scatter.png")
    if len(means) < means_min:
        return scatter, None

    fig, ax = plt.subplots(figsize=(7, 6))
    for i, (name, mu) in enumerate(means.items()):
        xy = (np.asarray(mu, float) - center) @ axes
        ax.scatter([xy[0]], [xy[1]], s=60, color=colours(i % colours.N), label=name)
        ax.annotate(name, (xy[0], xy[1]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"{prefix}1")
    ax.set_ylabel(f"{prefix}2")
    ax.set_title(f"Mean embedding per dataset{' — ' + title if title else ''}")
    ax.legend(fontsize=8, loc="best")
    return scatter, _png(fig, out / "latent_means.png")


def plot_encoder_latent(
    registry: Registry,
    encoder: int | str | Encoder,
    datasets: list[str] | None,
    out_dir: str | Path,
    *,
    all_versions: bool = False,
    left_out: list[LeftOut] | None = None,
    unrecorded_out: list[Unrecorded] | None = None,
) -> tuple[Path, Path]:
    """Figures 5 and 6 for ``datasets`` (default: every dataset with usable embeddings under
    ``encoder`` (:mod:`.usable`), its current such version only unless ``all_versions``; the
    versions left out as unusable are appended to ``left_out``, those used as their unrecorded
    extraction left them to ``unrecorded_out``), using up to :data:`SCATTER_MAX` test
    embeddings per dataset. A dataset given by name must be usable. Draws Figure 6 also for
    one dataset; what a user sees uses :func:`latent_figures`."""
    enc = get_encoder(registry, encoder)
    samples, means = _gather(registry, enc, datasets, all_versions, left_out, unrecorded_out)
    return plot_latent(samples, means, out_dir, title=f"encoder {enc.name}")


def latent_figures(
    registry: Registry,
    encoder: int | str | Encoder,
    datasets: list[str] | None,
    out_dir: str | Path,
    *,
    all_versions: bool = False,
    left_out: list[LeftOut] | None = None,
    unrecorded_out: list[Unrecorded] | None = None,
) -> tuple[list[Path], str]:
    """As :func:`plot_encoder_latent` (``pomlia plot latent``), but Figure 6 only for two
    datasets or more: the PCA of one mean is one point on axes of rounding noise. Returns the
    PNG paths written and a note saying why Figure 6 was not (else empty)."""
    enc = get_encoder(registry, encoder)
    samples, means = _gather(registry, enc, datasets, all_versions, left_out, unrecorded_out)
    scatter, mean_plot = _figures(samples, means, Path(out_dir), f"encoder {enc.name}", means_min=2)
    if mean_plot is None:
        return [scatter], "latent_means.png not written: the mean embeddings need 2 data sets"
    return [scatter, mean_plot], ""


def _gather(
    registry: Registry,
    enc: Encoder,
    datasets: list[str] | None,
    all_versions: bool,
    left_out: list[LeftOut] | None,
    unrecorded_out: list[Unrecorded] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The test embeddings (up to :data:`SCATTER_MAX`) and the mean embedding per dataset."""
    refs = datasets
    if not refs:
        sets, left = candidates(registry, enc, all_versions=all_versions)
        refs = [ref for _fs, ref in sets]
        if left_out is not None:
            left_out.extend(left)
        if not refs and left:
            raise InputError(
                f"no datasets to plot: none has usable embeddings under encoder '{enc.name}' "
                f"({left_out_note(left)})"
            )
    samples, means = {}, {}
    for ref in refs:
        fs, full = fingerprint_set(registry, enc, ref)
        if unrecorded_out is not None:
            unrecorded_out.extend(unrecorded([(fs, full)], enc))
        x = embedding_sample(registry, enc, full, SCATTER_MAX, split="test")
        if len(x) == 0:  # a dataset without a test split: use all rows
            x = embedding_sample(registry, enc, full, SCATTER_MAX)
        label = (
            full.split("@")[0]
            if [r.split("@")[0] for r in refs].count(full.split("@")[0]) <= 1
            else full
        )
        samples[label], means[label] = x, np.asarray(fs.mean, float)
    return samples, means
