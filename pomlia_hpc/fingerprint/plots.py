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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_atomic
from pomlia_hpc.fingerprint.candidates import candidates, fingerprint_set
from pomlia_hpc.fingerprint.encoders import get_encoder
from pomlia_hpc.fingerprint.sample import embedding_sample
from pomlia_hpc.fingerprint.usable import LeftOut, Unrecorded, left_out_note, unrecorded
from pomlia_hpc.plotting import new_figure
from pomlia_hpc.registry import Encoder, Registry

#: Points per dataset in the scatter (evenly spaced test rows).
SCATTER_MAX = 500


#: Marker shapes, in turn once the colours of a colour map are used up: (colour, marker) stays
#: unique for up to 20 x 8 data sets, so the legend names one data set per symbol.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class Projection:
    """Samples projected to 2-D: identity for d <= 2 (axes ``z1``, ``z2``), else PCA on the
    pooled samples; ``explained`` is each PC's share of the pooled variance (0-1)."""

    samples: dict[str, np.ndarray]
    prefix: str
    center: np.ndarray
    axes: np.ndarray
    explained: tuple[float, ...] = ()

    def axis_label(self, i: int) -> str:
        """Label of axis ``i`` (0 or 1), with its share of the variance for a PC."""
        if i < len(self.explained):
            pct = 100 * self.explained[i]
            share = f"{pct:.0f}%" if pct >= 1 else "<1%"  # not "0%": the axis does vary
            return f"{self.prefix}{i + 1} ({share} of variance)"
        return f"{self.prefix}{i + 1}"

    def place(self, v: np.ndarray) -> np.ndarray:
        """``v`` ((d,) or (n, d)) in the projection's 2-D coordinates."""
        return (np.asarray(v, float) - self.center) @ self.axes


def project_2d(samples: dict[str, np.ndarray]) -> Projection:
    """Project every sample to 2-D: identity for d <= 2, else PCA on the pooled samples."""
    pooled = np.concatenate(list(samples.values()))
    d = pooled.shape[1]
    if d <= 2:
        axes = np.eye(d, 2)
        return Projection({k: v @ axes for k, v in samples.items()}, "z", np.zeros(d), axes)
    center = pooled.mean(0)
    _u, sv, vt = np.linalg.svd(pooled - center, full_matrices=False)
    total = float((sv**2).sum())
    explained = tuple(float(x) / total for x in sv[:2] ** 2) if total > 0 else ()
    axes = vt[:2].T
    proj = {k: (v - center) @ axes for k, v in samples.items()}
    return Projection(proj, "PC", center, axes, explained)


def style(i: int, n: int) -> tuple[tuple[float, ...], str]:
    """Colour and marker of data set ``i`` of ``n``: tab10 (tab20 past 10), and the next
    marker shape each time the colours come round again."""
    colours = plt.get_cmap("tab20" if n > 10 else "tab10")
    return colours(i % colours.N), MARKERS[(i // colours.N) % len(MARKERS)]


def _legend(ax: Axes, n: int, **kw: Any) -> None:
    # Outside the axes, right of them: inside ("best") it covered points.
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize=8,
        ncol=1 if n <= 25 else 2,
        **kw,
    )


def scatter_figure(proj: Projection, title: str = "") -> Figure:
    """Figure 5 of a :class:`Projection`: each data set's points in its own colour and marker
    (:func:`style`), the legend outside the axes."""
    with new_figure(figsize=(7, 6)) as (fig, ax):
        n = len(proj.samples)
        for i, (name, xy) in enumerate(proj.samples.items()):
            colour, marker = style(i, n)
            ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.6, color=colour, marker=marker, label=name)
        ax.set_xlabel(proj.axis_label(0))
        ax.set_ylabel(proj.axis_label(1))
        ax.set_title(f"Latent space, test samples{chr(10) + title if title else ''}", fontsize=11)
        _legend(ax, n, markerscale=2.5)
        return fig


def means_figure(proj: Projection, means: dict[str, np.ndarray], title: str = "") -> Figure:
    """Figure 6: each data set's mean embedding in ``proj``'s coordinates, labelled."""
    with new_figure(figsize=(7, 6)) as (fig, ax):
        for i, (name, mu) in enumerate(means.items()):
            colour, marker = style(i, len(means))
            xy = proj.place(mu)
            ax.scatter([xy[0]], [xy[1]], s=60, color=colour, marker=marker, label=name)
            ax.annotate(name, (xy[0], xy[1]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(proj.axis_label(0))
        ax.set_ylabel(proj.axis_label(1))
        ax.set_title(f"Mean embedding per dataset{chr(10) + title if title else ''}", fontsize=11)
        _legend(ax, len(means))
        return fig


def latent_title(encoder: str, refs: list[str], *, all_versions: bool = False) -> str:
    """Second title line of the latent figures: the encoder and the data sets, each with the
    first 8 characters of its version while there are up to 4, else their count."""
    if len(refs) <= 4:
        shown = ", ".join(
            r.split("@")[0] + "@" + r.split("@")[1][:8] if "@" in r else r for r in refs
        )
        return f"encoder {encoder}, {len(refs)} data set{'' if len(refs) == 1 else 's'}: {shown}"
    which = "all versions" if all_versions else "current versions"
    return f"encoder {encoder}, {len(refs)} data sets ({which})"


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
    proj = project_2d(samples)
    scatter = _png(scatter_figure(proj, title), out / "latent_scatter.png")
    if len(means) < means_min:
        return scatter, None
    return scatter, _png(means_figure(proj, means, title), out / "latent_means.png")


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
    samples, means, refs = _gather(registry, enc, datasets, all_versions, left_out, unrecorded_out)
    title = latent_title(enc.name, refs, all_versions=all_versions)
    return plot_latent(samples, means, out_dir, title=title)


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
    samples, means, refs = _gather(registry, enc, datasets, all_versions, left_out, unrecorded_out)
    title = latent_title(enc.name, refs, all_versions=all_versions)
    scatter, mean_plot = _figures(samples, means, Path(out_dir), title, means_min=2)
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
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """The test embeddings (up to :data:`SCATTER_MAX`) and the mean embedding per dataset,
    and the full refs (``name@version``) drawn."""
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
    fulls: list[str] = []
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
        fulls.append(full)
    return samples, means, fulls
