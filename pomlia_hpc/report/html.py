"""Small, dependency-free HTML building blocks for the static report.

Every page is one self-contained file: inline CSS, images as ``data:`` URIs, no scripts, no
fonts or anything else fetched from a network, so it opens from a cluster file system (or a
copied folder) in any browser without a server. All text from the workspace is escaped.
"""

from __future__ import annotations

import base64
import html
import math
import os
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from pomlia_hpc.times import as_utc

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1b1f24;
background:#fafbfc}
header{background:#123047;color:#fff;padding:.6rem 1.2rem}
header a{color:#cfe6ff;margin-right:1rem;text-decoration:none}
header a.here{color:#fff;font-weight:600;text-decoration:underline}
main{padding:1rem 1.4rem;max-width:1400px}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#eef2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.bad{color:#cf222e}.warn{color:#9a6700}.muted{color:#57606a}
img{max-width:100%;border:1px solid #d0d7de;background:#fff}
.grid{display:flex;flex-wrap:wrap;gap:1rem}.card{background:#fff;border:1px solid #d0d7de;
padding:.6rem;border-radius:6px}
pre{white-space:pre-wrap;font-size:.8rem;background:#f6f8fa;padding:.5rem;max-height:20rem;
overflow:auto}
"""


def esc(value: Any) -> str:
    """``value`` as escaped HTML text."""
    return html.escape("" if value is None else str(value), quote=True)


def relative_href(target: Path, folder: Path) -> str:
    """A link from a page in ``folder`` to the file ``target``: relative (an absolute
    ``file://`` link breaks when the folders are copied or served over HTTP), with ``/``
    separators and each part URL-quoted (a ``#`` or ``?`` in a name would end the path)."""
    rel = Path(os.path.relpath(target, folder))
    return "/".join(urllib.parse.quote(part) for part in rel.parts)


def cut(text: Any, limit: int) -> str:
    """``text`` (as a string) cut to ``limit`` characters with an ellipsis. Cut the raw text,
    then escape it: cutting escaped HTML can split an entity (``&quo``)."""
    raw = "" if text is None else str(text)
    return raw if len(raw) <= limit else raw[: limit - 1] + "…"


def utc_text(value: Any, *, seconds: bool = False) -> str:
    """A recorded time (a datetime or ISO 8601 text; one without a zone is UTC, as pomlia
    records them) as ``YYYY-MM-DD HH:MM`` (``:SS`` with ``seconds``) in UTC, the one zone
    every page shows and its column headers name; text that is no time is shown as it is,
    nothing as an empty string."""
    if value is None or value == "":
        return ""
    when = as_utc(value)
    if when is None:
        return str(value)
    return when.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


#: What the report shows for an undefined number (a metric not recorded, NaN or infinite):
#: an empty cell reads as "not filled in" and Python's ``nan`` as a bug.
NA = "n/a"


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is a finite int or float (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def metric_text(value: Any, digits: int = 3) -> str:
    """A metric (unitless, or in the unit its column names) to ``digits`` decimals, or
    :data:`NA` when it is undefined: not recorded (None), not a number, NaN or infinite."""
    return f"{value:.{digits}f}" if is_number(value) else NA


def metric_with_n(value: Any, n: Any) -> str:
    """A metric as :func:`metric_text` gives it, with the images it was computed on when
    recorded: ``0.912 (n=412)``, as `runs list` shows it (an AUC of 1.000 from 2 images read
    like one from 400)."""
    count = f" (n={n})" if isinstance(n, int) and not isinstance(n, bool) else ""
    return metric_text(value) + count


def fmt(value: Any, digits: int = 4) -> str:
    """A number short enough for a table cell (``digits`` significant digits; :data:`NA` for
    NaN or infinity); anything else as text."""
    if isinstance(value, bool) or value is None:
        return esc(value if value is not None else "")
    if isinstance(value, float):
        return esc(f"{value:.{digits}g}" if math.isfinite(value) else NA)
    return esc(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then they are HTML already)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            num = isinstance(cell, int | float) and not isinstance(cell, bool)
            text = str(cell) if raw and not num else fmt(cell)
            cells.append(f"<td class='num'>{text}</td>" if num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png(data: bytes, alt: str, width: int | None = None) -> str:
    """An ``<img>`` holding PNG bytes inline."""
    b64 = base64.b64encode(data).decode("ascii")
    w = f" width='{width}'" if width else ""
    return f"<img alt='{esc(alt)}'{w} src='data:image/png;base64,{b64}'>"


def status_span(status: str) -> str:
    cls = {
        "ok": "ok",
        "done": "ok",
        "COMPLETED": "ok",
        "crashed": "bad",
        "failed": "bad",
        "FAILED": "bad",
        "running": "warn",
    }
    return f"<span class='{cls.get(status, 'muted')}'>{esc(status)}</span>"


#: How every page's title ends: how a report of a pomlia before the marker file is told from a
#: folder of someone's own pages (:func:`pomlia_hpc.report.build.check_out_folder`).
REPORT_TITLE_END = " · pomlia report</title>"


def page(title: str, body: str, nav: Sequence[tuple[str, str]], here: str, stamp: str) -> str:
    """A whole page: ``nav`` is (file, label) pairs; ``here`` the current file."""
    current = " class='here'"
    links = " ".join(
        f"<a href='{esc(f)}'{current if f == here else ''}>{esc(label)}</a>" for f, label in nav
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}{REPORT_TITLE_END}"
        "<link rel='icon' href='data:,'>"  # no favicon request (a file:// 404 in the console)
        f"<style>{CSS}</style></head><body>"
        f"<header><strong>pomlia</strong> &nbsp; {links}</header>"
        f"<main><h1>{esc(title)}</h1>{body}"
        f"<p class='muted'>generated {esc(stamp)}</p></main></body></html>"
    )
