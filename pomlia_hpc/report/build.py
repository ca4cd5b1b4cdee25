"""Write the report: one HTML page per section whose data exists, plus an overview.

The folder is written under a temporary name next to ``out_dir`` and renamed into place, so a
reader never sees half a report. An existing folder is replaced as a whole only when it carries
the report's marker file (:data:`MARKER`), so only a folder a report wrote is ever replaced;
any other folder that holds something is refused (its files could be anyone's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from pomlia_hpc.errors import InputError
from pomlia_hpc.files import make_dirs, probe_writable, remove_made_dirs, staged_dir
from pomlia_hpc.registry import (
    DatasetVersion,
    Deployment,
    Encoder,
    Job,
    Model,
    MonitorReport,
    Recommendation,
    Registry,
    Run,
    Task,
)
from pomlia_hpc.report import pages_data, pages_learn, pages_ops, pages_strategy
from pomlia_hpc.report.html import REPORT_TITLE_END, esc, page, table
from pomlia_hpc.workspace import Workspace

#: The file every report folder holds: the proof that ``pomlia report`` wrote the folder, and
#: so may replace it. A folder without it is replaced only when it holds nothing but report
#: pages (a report of a pomlia before the marker existed); anything else is refused.
MARKER = ".pomlia-report"
MARKER_TEXT = (
    "This folder was written by `pomlia report`; the next `pomlia report` into it replaces it\n"
    "as a whole. Keep nothing else here.\n"
)

#: A page builder: ``builder(registry, workspace, folder)`` returns the page's body, or None
#: when it has no data; ``folder`` is the report folder the page will be read from (links to
#: other files are made relative to it).
PageFn = Callable[[Registry, Workspace, Path], str | None]

#: (file, title, builder) in navigation order; a builder returns None when it has no data.
PAGES: list[tuple[str, str, PageFn]] = [
    ("datasets.html", "Datasets", pages_data.datasets_page),
    ("fingerprints.html", "Fingerprints", pages_data.fingerprints_page),
    ("recommendations.html", "Recommendations", pages_strategy.recommendations_page),
    ("studies.html", "Studies", pages_learn.studies_page),
    ("models.html", "Models and deployments", pages_learn.models_page),
    ("monitor.html", "Monitor history", pages_ops.monitor_page),
    ("pipelines.html", "Pipelines", pages_ops.pipelines_page),
]


def register_page(file: str, title: str, builder: PageFn, *, before: str | None = None) -> None:
    """Add a page (e.g. the recommender's); ``before`` names the file it precedes."""
    entry = (file, title, builder)
    files = [p[0] for p in PAGES]
    if file in files:
        PAGES[files.index(file)] = entry
    elif before in files:
        PAGES.insert(files.index(before), entry)
    else:
        PAGES.append(entry)


@dataclass(frozen=True)
class ReportResult:
    folder: Path
    pages: list[Path]


def _counts(registry: Registry) -> list[tuple[str, int]]:
    """The overview's counts, in the order of the pages (a study is a name runs share)."""
    with registry.session() as s:

        def rows(model: type) -> int:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

        studies = select(func.count(func.distinct(Run.study))).where(Run.study.is_not(None))
        return [
            ("dataset versions", rows(DatasetVersion)),
            ("encoders", rows(Encoder)),
            ("tasks", rows(Task)),
            ("recommendations", rows(Recommendation)),
            ("studies", int(s.scalar(studies) or 0)),
            ("training runs", rows(Run)),
            ("models", rows(Model)),
            ("deployments", rows(Deployment)),
            ("monitor reports", rows(MonitorReport)),
            ("jobs", rows(Job)),
        ]


def _is_report_page(path: Path) -> bool:
    """Whether ``path`` is a page a report wrote (its title says so, :func:`.html.page`): a
    folder of report page names holding someone's own ``index.html`` is not an old report."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:  # a folder of that name, unreadable: not a page of ours
        return False
    return REPORT_TITLE_END.encode() in head


def check_out_folder(out: Path) -> None:
    """Refuse ``out`` unless the report may be written there: a new or empty folder, or one
    that holds a report (its :data:`MARKER`). Creates nothing: a refused report leaves no
    folder behind (:func:`build_report` makes the missing parents after this check)."""
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise InputError(
            f"report folder {out} cannot be created: {above} is a file, expected a folder"
        )
    if not out.exists() or (out / MARKER).is_file():
        return
    if not out.is_dir():
        raise InputError(f"{out} is a file: expected a folder for the report (new or a report)")
    held = {p.name for p in out.iterdir()}
    if held <= {"index.html", *(file for file, _, _ in PAGES)} and all(
        _is_report_page(out / name) for name in held
    ):
        return  # empty, or a report of a pomlia before the marker: nothing but its pages
    if (out / "index.html").is_file():
        # A web site, or a report with files of someone's added: replacing would lose them,
        # so the user decides.
        others = ", ".join(sorted(held - {"index.html", *(f for f, _, _ in PAGES)})[:3])
        foreign = ", ".join(sorted(n for n in held if not _is_report_page(out / n))[:3])
        raise InputError(
            f"{out} is not a pomlia report folder (no {MARKER} file): it holds an index.html "
            + (
                f"and files a report does not write ({others})"
                if others
                else f"and pages a report did not write ({foreign})"
            )
            + "; the report replaces its folder as a whole, so it writes only into a new or "
            "empty folder or one a report wrote: pass another --out"
        )
    raise InputError(
        f"{out} is not a pomlia report folder (no {MARKER} file) and is not empty: expected a "
        "new or empty folder, or one a report wrote (pass another --out)"
    )


def build_report(
    registry: Registry,
    workspace: Workspace,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    max_studies: int = pages_learn.MAX_STUDIES,
) -> ReportResult:
    """Write the report of ``workspace`` into ``out_dir`` (default ``<home>/reports/html``).
    ``progress`` gets the title of each page built with data (the pages to be written, but
    for the overview ``index.html``); ``max_studies``: how many studies (the newest) the
    Studies page shows in full, with a figure each."""
    out = (out_dir or workspace.path("reports", "html")).expanduser().resolve()
    check_out_folder(out)
    try:
        made = make_dirs(out.parent)
    except OSError as exc:  # make_dirs removed what it made
        raise InputError(f"report folder {out} cannot be created: {exc.strerror}") from exc
    try:
        try:
            # The report is staged beside OUT and renamed into place: a parent where nothing
            # can be written (/proc, a read-only mount) is refused now, not after every page
            # was built (seconds on a large workspace).
            probe_writable(out.parent)
        except OSError as exc:
            raise InputError(
                f"report folder {out} cannot be written ({exc.strerror or exc} in "
                f"{out.parent}): expected a writable folder"
            ) from exc
        return _write_report(registry, workspace, out, progress, max_studies)
    except BaseException:
        # Refused or interrupted: the parents this call made go again (only while empty).
        remove_made_dirs(made)
        raise


def _write_report(
    registry: Registry,
    workspace: Workspace,
    out: Path,
    progress: Callable[[str], None] | None,
    max_studies: int,
) -> ReportResult:
    """Build the pages and publish them as the folder ``out``, whose parent exists."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    bodies: list[tuple[str, str, str]] = []
    for file, title, builder in PAGES:
        if builder is pages_learn.studies_page:
            body = pages_learn.studies_page(registry, workspace, out, max_studies)
        else:
            body = builder(registry, workspace, out)
        if body is not None:  # a page without data is not written, nor listed
            bodies.append((file, title, body))
            if progress is not None:
                progress(title)
    nav = [("index.html", "Overview")] + [(f, t) for f, t, _b in bodies]
    overview = (
        f"<p>Workspace <code>{esc(workspace.home)}</code>, registry "
        f"<code>{esc(registry.display_url())}</code>.</p>"
        + table(["what", "count"], _counts(registry))
        + "<ul>"
        + "".join(f"<li><a href='{esc(f)}'>{esc(t)}</a></li>" for f, t, _b in bodies)
        + "</ul>"
        + ("" if bodies else "<p>Nothing recorded yet: run a pipeline or `pomlia data add`.</p>")
    )
    try:
        with staged_dir(out, replace=True) as staged:
            tmp = staged.path
            # UTF-8 as the pages declare it, whatever the locale: in an ASCII locale the
            # "·" of a title failed the report, in a Latin-1 one it was garbled.
            (tmp / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
            written = [tmp / "index.html"]
            overview_page = page("Workspace report", overview, nav, "index.html", stamp)
            written[0].write_text(overview_page, encoding="utf-8")
            for file, title, body in bodies:
                (tmp / file).write_text(page(title, body, nav, file, stamp), encoding="utf-8")
                written.append(tmp / file)
    except OSError as exc:
        raise InputError(
            f"report folder {out} cannot be written ({exc.strerror or exc}): expected a "
            "writable folder"
        ) from exc
    return ReportResult(out, [out / p.name for p in written])
