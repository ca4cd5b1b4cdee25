"""The report's Datasets and Fingerprints pages mark the version each dataset's plain name means
(``datasets.current_version_id``: the one last added, also when an older content is added
again) and plot only those versions, as ``pomlia plot latent`` and ``similar`` do; the latent
means figure of a single dataset is left out with the same one-line reason. Checked on the
HTML and in a real headless Chromium."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from pomlia_hpc.registry import Dataset, DatasetVersion, Registry
from pomlia_hpc.report import build_report
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import make_dataset, make_encoder

#: The note `pomlia plot latent` prints for one data set.
ONE_SET = "latent_means.png not written: the mean embeddings need 2 data sets"


def _world(
    home: Path, datasets: list[tuple[str, str, int]]
) -> tuple[Workspace, Registry, list[str]]:
    """A workspace with ``datasets`` ((name, flag, seed); a name twice: two versions) and an
    untrained 2-d encoder ``enc`` with embeddings of every version."""
    from pomlia_hpc.cluster import Executor
    from pomlia_hpc.fingerprint.extract import extract

    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="debug")
    ws.create()
    reg = Registry.open(ws.db_url)
    refs = [
        make_dataset(ws, reg, n, flag, sizes=(24, 8, 16), seed=seed) for n, flag, seed in datasets
    ]
    make_encoder(ws, reg, "enc", latent_dim=2)
    extract(reg, ws, "enc", refs, executor=Executor.from_profile("debug", ws.jobs, reg))
    return ws, reg, refs


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Registry, list[str]]:
    """``blood`` in two versions, the older one current again (re-added), and ``derma``."""
    home = tmp_path_factory.mktemp("versions") / "home"
    ws, reg, refs = _world(
        home, [("blood", "bloodmnist", 0), ("blood", "bloodmnist", 3), ("derma", "dermamnist", 0)]
    )
    old = refs[0].split("@")[1]
    with reg.session() as s:
        ds = s.scalars(select(Dataset).where(Dataset.name == "blood")).one()
        ds.current_version_id = s.scalar(
            select(DatasetVersion.id).where(DatasetVersion.version == old)
        )
    return ws, reg, refs


def _rows(page: str) -> list[dict[str, str]]:
    """The rows of every table of ``page`` as {header: cell text}."""
    out = []
    for tab in re.findall(r"<table>(.*?)</table>", page, re.S):
        rows = []
        for row in re.findall(r"<tr>(.*?)</tr>", tab, re.S):
            cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
            rows.append(
                [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", c)).split()) for c in cells]
            )
        out += [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    return out


def test_the_datasets_table_marks_the_current_version(
    versioned: tuple[Workspace, Registry, list[str]], tmp_path: Path
) -> None:
    """The table listed every version alike: which one `pomlia` uses for the plain name was not
    said (here the older blood version, added again)."""
    ws, reg, refs = versioned
    res = build_report(reg, ws, tmp_path / "r")
    rows = [r for r in _rows((res.folder / "datasets.html").read_text()) if "version" in r]
    marked = {f"{r['dataset']}@{r['version']}": r["current"] for r in rows}
    assert marked == {refs[0]: "current", refs[1]: "", refs[2]: "current"}


def test_the_current_version_is_listed_however_many_newer_there_are(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """Only the 3 newest versions of a dataset were listed: an older current one was not."""
    from pomlia_hpc.report.pages_data import MAX_VERSIONS, datasets_page

    refs = [make_dataset(workspace, reg, "blood", seed=i) for i in range(MAX_VERSIONS + 1)]
    with reg.session() as s:
        ds = s.scalars(select(Dataset).where(Dataset.name == "blood")).one()
        ds.current_version_id = s.scalar(
            select(DatasetVersion.id).where(DatasetVersion.version == refs[0].split("@")[1])
        )
    body = datasets_page(reg, workspace, tmp_path) or ""
    rows = [r for r in _rows(body) if "version" in r]
    assert len(rows) == MAX_VERSIONS and f"blood@{rows[0]['version']}" != refs[0]
    assert [f"blood@{r['version']}" for r in rows if r["current"]] == [refs[0]]
    assert "1 older version(s) not listed" in " ".join(body.split())


def test_fingerprint_figures_show_the_current_versions_only(
    versioned: tuple[Workspace, Registry, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    browser: Any,
) -> None:
    """The latent maps and the distance heatmap drew every version of a dataset (both blood
    versions) where `pomlia plot latent` and `similar` use the current one; the page's table
    of fingerprint sets now marks the current version and says which version is drawn."""
    import pomlia_hpc.fingerprint.plots as plots
    import pomlia_hpc.report.figures as figures

    ws, reg, refs = versioned
    drawn: list[str] = []
    sample = plots.embedding_sample
    monkeypatch.setattr(
        plots,
        "embedding_sample",
        lambda r, e, ref, *a, **k: drawn.append(ref) or sample(r, e, ref, *a, **k),
    )
    heat: list[list[str]] = []
    heatmap = figures.heatmap

    def spy(matrix: np.ndarray, labels: list[str], title: str, *a: Any) -> bytes:
        heat.append(list(labels))
        return heatmap(matrix, labels, title, *a)

    monkeypatch.setattr(figures, "heatmap", spy)
    res = build_report(reg, ws, tmp_path / "r")
    assert sorted(set(drawn)) == sorted([refs[0], refs[2]])  # blood's current, derma
    assert heat == [["blood", "derma"]]
    page = (res.folder / "fingerprints.html").read_text()
    sets = {f"{r['dataset']}@{r['version']}": r for r in _rows(page) if "in the figures" in r}
    assert {ref: r["current"] for ref, r in sets.items()} == {
        refs[0]: "current",
        refs[1]: "",
        refs[2]: "current",
    }
    assert sets[refs[0]]["in the figures"] == "yes" and sets[refs[2]]["in the figures"] == "yes"
    assert sets[refs[1]]["in the figures"].startswith("no: ")
    seen = browser.check(res.folder / "fingerprints.html")
    assert seen.console_errors == [] and seen.broken_images == []
    assert [i["alt"] for i in seen.images][:2] == ["latent scatter", "latent means"]
    assert len(seen.images) == 3 and ONE_SET not in seen.text


def test_the_fingerprint_sets_table_is_bounded_per_dataset(
    versioned: tuple[Workspace, Registry, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The table of an encoder's fingerprint sets listed every version ever extracted (a
    loop that harvests a version a night added a row a night for good): it lists each
    dataset's current and drawn version, then its newest others up to MAX_VERSIONS, and
    counts the rest."""
    from pomlia_hpc.report import pages_data

    ws, reg, refs = versioned
    monkeypatch.setattr(pages_data, "MAX_VERSIONS", 1)
    page = pages_data.fingerprints_page(reg, ws, tmp_path) or ""
    sets = [f"{r['dataset']}@{r['version']}" for r in _rows(page) if "in the figures" in r]
    assert sets == [refs[0], refs[2]]  # blood's current (older) version kept, its newer left
    assert "1 older version(s) not listed (pomlia fingerprint show NAME@VERSION shows one)" in (
        " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())
    )


def test_one_dataset_gets_no_latent_means_figure_but_its_reason(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, browser: Any
) -> None:
    """The report drew the one-point latent means figure of a single dataset (a PCA of rounding
    noise) that `pomlia plot latent` leaves out; it shows that command's reason instead."""
    ws, reg, _refs = _world(
        tmp_path_factory.mktemp("one") / "home", [("pneu", "pneumoniamnist", 0)]
    )
    res = build_report(reg, ws, tmp_path / "r")
    seen = browser.check(res.folder / "fingerprints.html")
    assert seen.console_errors == [] and seen.broken_images == []
    alts = [i["alt"] for i in seen.images]
    assert "latent means" not in alts and alts[0] == "latent scatter" and len(alts) == 2
    assert ONE_SET in " ".join(seen.text.split())
    # the reason stands where the figure would be: after the scatter, before the heatmap
    page = (res.folder / "fingerprints.html").read_text()
    assert page.index("alt='latent scatter'") < page.index(ONE_SET) < page.index("alt='distance")


def test_the_distance_heatmap_ranks_as_similar_does(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heatmap drew the Euclidean distance between mean embeddings, which ranked the data
    sets the opposite way to `pomlia similar` (its combined distance): each row now holds what
    `pomlia similar ROW` gives, and the title names that distance."""
    import pomlia_hpc.report.figures as figures
    from pomlia_hpc.fingerprint.ranking import DEFAULT_DISTANCE
    from pomlia_hpc.fingerprint.similar import similar_datasets

    ws, reg, _refs = _world(
        tmp_path_factory.mktemp("three") / "home",
        [("blood", "bloodmnist", 0), ("derma", "dermamnist", 1), ("pneu", "pneumoniamnist", 2)],
    )
    seen: list[tuple[np.ndarray, list[str], str]] = []
    heatmap = figures.heatmap

    def spy(matrix: np.ndarray, labels: list[str], title: str, *a: Any) -> bytes:
        seen.append((np.asarray(matrix), list(labels), title))
        return heatmap(matrix, labels, title, *a)

    monkeypatch.setattr(figures, "heatmap", spy)
    build_report(reg, ws, tmp_path / "r")
    [(matrix, labels, title)] = seen
    assert f": {DEFAULT_DISTANCE} (as pomlia similar ranks)" in title
    for i, name in enumerate(labels):
        found = {r.ref.split("@")[0]: r.distance for r in similar_datasets(reg, "enc", name, k=9)}
        row = {other: float(matrix[i, j]) for j, other in enumerate(labels) if j != i}
        assert row == pytest.approx(found), name
        assert matrix[i, i] == 0.0


def test_heatmap_numbers_are_readable_and_of_one_precision() -> None:
    """The cells' numbers were 6 pt in a precision of their own (``0.1`` beside ``0.088``)."""
    from pomlia_hpc.report.figures import HEATMAP_MAX_NUMBERS, heatmap_figure

    m = np.array([[0.0, 0.1, 0.0881], [0.1, 0.0, 1.3], [0.0881, 1.3, 0.0]])
    fig = heatmap_figure(m, ["a", "b", "c"], "t")
    texts = fig.axes[0].texts
    assert [t.get_text() for t in texts] == [f"{v:.2f}" for v in m.ravel()]
    assert all(t.get_fontsize() >= 8 for t in texts)
    big = HEATMAP_MAX_NUMBERS + 1
    many = heatmap_figure(np.zeros((big, big)), [str(i) for i in range(big)], "t")
    assert len(many.axes[0].texts) == 0
