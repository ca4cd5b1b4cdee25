"""The parts of the REST API that describe it: the ``/docs`` page, HEAD for the GET routes and
the words of a 404 or 405.

Why not FastAPI's Swagger UI and ReDoc pages: they load their scripts and styles from
cdn.jsdelivr.net, and a compute node has no route to the internet, so both were blank pages
there (no package with the assets is installed). ``/docs`` is a small self-contained page built
from the OpenAPI description (routes, bodies, answers), with a link to ``/openapi.json`` for
tools; ``/redoc`` is gone.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

#: How much of a request path a 404 or 405 quotes (a scanner may send kilobytes).
SHOWN_PATH_CHARS = 100


def add_head_routes(app: FastAPI) -> None:
    """Answer HEAD like GET, without a body, on every GET route of ``app`` (load balancers
    probe with HEAD; FastAPI's routes answer it 405). Uvicorn sends no body for a HEAD
    request; the HEAD routes stay out of the OpenAPI description, as HEAD is GET by
    definition (RFC 9110)."""
    for route in list(app.routes):
        if isinstance(route, APIRoute) and "GET" in (route.methods or set()):
            app.add_api_route(
                route.path,
                route.endpoint,
                methods=["HEAD"],
                include_in_schema=False,
                response_class=route.response_class,
                name=f"{route.name}_head",
            )


def shown_path(path: str) -> str:
    """``path`` as a message quotes it: at most :data:`SHOWN_PATH_CHARS` characters."""
    return path if len(path) <= SHOWN_PATH_CHARS else path[:SHOWN_PATH_CHARS] + "..."


def not_found_message(path: str, routes: Iterable[str]) -> str:
    """The 404 text for ``path``: the route it was probably meant for (a trailing slash is not
    redirected: a redirect would be built from the client's Host header), else the routes."""
    known = sorted(routes)
    trimmed = path.rstrip("/")
    if trimmed != path and trimmed in known:
        return f"no route {shown_path(path)}; use {trimmed} (without the trailing slash)"
    return f"no route {shown_path(path)}; routes: {', '.join(known)} (see /docs)"


def not_allowed_message(method: str, path: str, allow: str | None) -> str:
    """The 405 text for ``method`` on ``path``, naming the methods the route takes."""
    allowed = f"; allowed: {allow}" if allow else ""
    return f"method {method[:16]} is not allowed on {shown_path(path)}{allowed}"


def docs_page(spec: dict[str, Any]) -> str:
    """A self-contained HTML page (no script, no external asset) describing the routes of the
    OpenAPI description ``spec``: method, path, summary, request body types and answers."""
    info = spec.get("info", {})
    e = html.escape
    rows = []
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {})
            answers = "<br>".join(
                f"<b>{e(str(code))}</b> {e(str(r.get('description', '')))}"
                for code, r in op.get("responses", {}).items()
            )
            auth = " (bearer token)" if op.get("security") else ""
            rows.append(
                f"<tr><td><code>{e(method.upper())} {e(path)}</code></td>"
                f"<td>{e(str(op.get('summary', '')))}{e(auth)}</td>"
                f"<td>{e(', '.join(body)) or '-'}</td><td>{answers}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{e(str(info.get('title', 'API')))}</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:75em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;"
        "vertical-align:top;text-align:left}</style></head><body>"
        f"<h1>{e(str(info.get('title', 'API')))}</h1>"
        f"<p>{e(str(info.get('description', '')))}</p>"
        f"<p>Version {e(str(info.get('version', '')))}. The full description, for tools and "
        "clients: <a href='/openapi.json'>/openapi.json</a> (OpenAPI "
        f"{e(str(spec.get('openapi', '')))}).</p>"
        "<table><tr><th>route</th><th>what</th><th>request body</th><th>answers</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
