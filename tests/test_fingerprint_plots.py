"""The latent maps (Figures 5, 6): titles name the encoder and the data sets, PC axes say how
much variance they hold, the legend sits outside the axes, and past 20 data sets a marker
shape keeps every legend entry distinct (colours came round again)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from pomlia_hpc.fingerprint.plots import latent_title, means_figure, project_2d, scatter_figure


def _samples(n_sets: int, d: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"set{i:02d}": rng.normal(rng.normal(0, 3, d), 1.0, (30, d)) for i in range(n_sets)}


def test_25_data_sets_have_25_distinct_legend_symbols_outside_the_axes() -> None:
    samples = _samples(25)
    proj = project_2d(samples)
    fig = scatter_figure(proj, "encoder ae8, 25 data sets (current versions)")
    try:
        (ax,) = fig.axes
        assert (
            ax.get_title()
            == "Latent space, test samples\nencoder ae8, 25 data sets (current versions)"
        )
        symbols = set()
        for coll in ax.collections:
            colour = tuple(np.round(coll.get_facecolor()[0][:3], 3))
            marker = coll.get_paths()[0].vertices.tobytes()  # the marker's shape
            symbols.add((colour, marker))
        assert len(ax.collections) == 25 and len(symbols) == 25  # colours(i % 20) repeated
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == list(samples)
        fig.canvas.draw()
        # right of the axes, not over the points ("best" put it inside)
        assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            assert label.startswith("PC") and "% of variance" in label
        shares = [
            float(lab.split("(")[1].split("%")[0]) for lab in (ax.get_xlabel(), ax.get_ylabel())
        ]
        assert 0 < shares[1] <= shares[0] <= 100
    finally:
        plt.close(fig)


def test_the_means_figure_shares_the_axes_and_title() -> None:
    samples = _samples(3)
    proj = project_2d(samples)
    fig = means_figure(proj, {k: v.mean(0) for k, v in samples.items()}, "t")
    try:
        (ax,) = fig.axes
        assert ax.get_title() == "Mean embedding per dataset\nt"
        assert ax.get_xlabel() == proj.axis_label(0) and "% of variance" in ax.get_xlabel()
        assert len(ax.collections) == 3 and len(ax.texts) == 3
    finally:
        plt.close(fig)


def test_two_dimensional_latents_are_plotted_as_they_are() -> None:
    proj = project_2d(_samples(2, d=2))
    assert (proj.axis_label(0), proj.axis_label(1)) == ("z1", "z2")


def test_the_title_names_few_versions_and_counts_many() -> None:
    refs = ["blood@18dadb49aaaa", "derma@ea913af5bbbb"]
    assert latent_title("ae8", refs) == "encoder ae8, 2 data sets: blood@18dadb49, derma@ea913af5"
    assert latent_title("ae8", refs[:1]) == "encoder ae8, 1 data set: blood@18dadb49"
    many = [f"s{i}@{i:016x}" for i in range(12)]
    assert latent_title("ae8", many) == "encoder ae8, 12 data sets (current versions)"
    assert latent_title("ae8", many, all_versions=True).endswith("(all versions)")
