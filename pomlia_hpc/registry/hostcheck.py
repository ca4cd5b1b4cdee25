"""Whether a database URL names a host that does not exist, asked of the resolver itself, or
a connection setting the driver refuses.

A registry URL whose host no name server knows is a typo (bad input, exit 2), not a server
out of reach (exit 69, "try again later"). That used to be read from the driver's message,
which quotes the C library's words for ``EAI_NONAME``: glibc's "Name or service not known",
but musl says "Name does not resolve" and other systems other words, and a nightly script
then retried a typo for ever. :func:`host_unknown` asks ``getaddrinfo`` instead, whose error
codes do not depend on the wording.

The driver (psycopg 3) has asked ``getaddrinfo`` already, before it connects, and raises
``failed to resolve host 'H': [Errno N] ...`` only when no host resolved, N being the
resolver's code for H. Asking again waited on the resolver twice: a name server that does not
answer took its whole timeout (seconds to a minute) a second time before the error was said.
:func:`host_unknown` takes the driver's message and answers for H from N; only hosts it does
not answer for are asked.
"""

from __future__ import annotations

import re
import socket

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

#: getaddrinfo's answers for a name without an address: no such name (EAI_NONAME), or a name
#: that has no address (EAI_NODATA, where the C library has it). A name server that does not
#: answer (EAI_AGAIN) or fails (EAI_FAIL) is an outage, not a typo.
NO_SUCH_HOST_CODES = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


def url_hosts(url: str) -> list[str]:
    """The host names a database URL connects to: its host and libpq's ``host`` query
    parameter (a comma-separated list, or several), without Unix socket folders (``/...``;
    ``@...``, an abstract socket's name) and IP addresses' brackets; empty when it names
    none (SQLite, a local socket) or when libpq resolves none: with ``hostaddr`` it connects
    to that address and uses the host name only to check the server's certificate."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return []
    if parsed.query.get("hostaddr"):
        return []
    query = parsed.query.get("host", ())
    named = [parsed.host or "", *([query] if isinstance(query, str) else query)]
    hosts = [h.strip().strip("[]") for item in named for h in item.split(",")]
    return [h for h in hosts if h and not h.startswith(("/", "@"))]


#: psycopg 3's error when no host of the URL resolved: the last host and getaddrinfo's code.
_RESOLVE_FAILED = re.compile(r"failed to resolve host '(?P<host>[^']*)': \[Errno (?P<code>-?\d+)\]")


def host_unknown(url: str, said: str = "") -> bool:
    """Whether every host the database URL ``url`` names is unknown to the resolver (no
    such name, or no address for it); False when one resolves, when the resolver could not
    answer, or when the URL names no host. ``said``: the driver's error message, whose
    resolver code answers for the host it names (that host is not asked again)."""
    hosts = url_hosts(url)
    answered = _RESOLVE_FAILED.search(said)
    if answered is not None and answered["host"] in hosts:
        if int(answered["code"]) not in NO_SUCH_HOST_CODES:
            return False  # the name server failed or did not answer: an outage
        hosts = [h for h in hosts if h != answered["host"]]
        return all(_unknown(host) for host in hosts)
    return bool(hosts) and all(_unknown(host) for host in hosts)


def _unknown(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        return exc.errno in NO_SUCH_HOST_CODES
    except UnicodeError:  # a name the resolver cannot even take (bad IDNA): a typo as well
        return True
    return False


#: libpq's words for a setting of the URL it refuses before or while it connects (fe-connect.c:
#: ``invalid sslmode value: "x"``, ``invalid "x" value: "y"``, ``invalid port number: "99999"``,
#: ``invalid integer value "x" for connection option "keepalives"``, ``could not match 2 port
#: numbers to 3 hosts``, ``could not parse network address "x"`` of ``hostaddr``, ``weak
#: sslmode "x" may not be used with ...``), and a server that answered but will not take the
#: URL's TLS, GSSAPI or channel binding setting (``channel binding required, but SSL not in
#: use``): a typo or a wrong setting (bad input, exit 2), never a server out of reach (69, "try
#: again later"), which psycopg's "connection is bad: ..." (no SQLSTATE, no FATAL) looked like.
#: None of libpq's words for an outage (refused, timed out, closed, starting up) match.
_REFUSED_SETTING = re.compile(
    r'invalid [\w ]*value|invalid "\w+" value|invalid port number|'
    r"could not match \d+ \w+ \w+ to \d+|could not parse network address|weak sslmode|"
    r"SSL was required|but it was required|invalid SSL protocol version|"
    r"channel binding (?:is )?required"
)


def refused_setting(said: str) -> bool:
    """Whether ``said``, the driver's message for a failed connection, is a setting of the URL
    refused (see :data:`_REFUSED_SETTING`), rather than a server that did not answer."""
    return _REFUSED_SETTING.search(said) is not None
