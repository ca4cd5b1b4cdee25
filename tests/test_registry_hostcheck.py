"""A registry URL whose host does not exist is bad input (exit 2) whatever words the C
library uses for it; a server out of reach is 69. The resolver is the machine's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from pomlia_hpc.registry import server_unreachable
from pomlia_hpc.registry.hostcheck import host_unknown, url_hosts
from tests.fixtures.cli import pomlia_main

NO_SUCH = "no-such-host.invalid"  # RFC 6761: never resolves


def failed_connect(message: str) -> OperationalError:
    """The error SQLAlchemy raises when the driver could not connect, saying ``message``."""
    return OperationalError("connect", None, Exception(message))


@pytest.mark.parametrize(
    "words",
    [
        "Name does not resolve",  # musl (Alpine images)
        "nodename nor servname provided, or not known",  # BSD, macOS
        "Name or service not known",  # glibc
    ],
)
def test_an_unknown_host_is_no_outage_in_any_wording(words: str) -> None:
    """Only glibc's "Name or service not known" was recognised: in a container with musl the
    typo was exit 69, "try again later", and a nightly script retried it for ever."""
    url = f"postgresql+psycopg://pomlia:pomlia@{NO_SUCH}:5432/pomlia"
    said = f"failed to resolve host '{NO_SUCH}': [Errno -2] {words}"
    assert not server_unreachable(url, failed_connect(said))


def test_a_known_host_that_does_not_answer_is_an_outage() -> None:
    url = "postgresql+psycopg://pomlia:pomlia@localhost:1/pomlia"
    said = 'connection failed: connection to server at "127.0.0.1", port 1 failed: refused'
    assert server_unreachable(url, failed_connect(said))


def test_the_hosts_of_a_url() -> None:
    """libpq takes several hosts, in the URL and in its ``host`` parameter; a Unix socket
    folder is no host name."""
    assert url_hosts("postgresql+psycopg://u:p@db1,db2:5432/x") == ["db1", "db2"]
    assert url_hosts("postgresql+psycopg://u:p@/x?host=/run/postgresql") == []
    assert url_hosts("postgresql+psycopg://u:p@[::1]:5432/x") == ["::1"]
    assert url_hosts("sqlite:////tmp/registry.db") == []
    assert host_unknown(f"postgresql+psycopg://u:p@{NO_SUCH}/x")
    assert not host_unknown(f"postgresql+psycopg://u:p@{NO_SUCH},localhost/x")  # one resolves
    assert not host_unknown("postgresql+psycopg://u:p@/x?host=/run/postgresql")


def test_a_url_whose_host_names_are_not_resolved_has_no_unknown_host() -> None:
    """With libpq's ``hostaddr`` the server is reached at that address (the host name only
    checks its certificate), and ``@name`` is an abstract Unix socket: neither is asked of
    the resolver, so a server down behind them was exit 2, "fix the URL", not 69."""
    assert url_hosts(f"postgresql+psycopg://u:p@{NO_SUCH}:5432/x?hostaddr=127.0.0.1") == []
    assert not host_unknown(f"postgresql+psycopg://u:p@{NO_SUCH}:5432/x?hostaddr=127.0.0.1")
    assert url_hosts("postgresql+psycopg://u:p@/x?host=@pgsock") == []
    assert not host_unknown("postgresql+psycopg://u:p@/x?host=@pgsock")


def test_the_drivers_resolver_answer_is_not_asked_again() -> None:
    """psycopg asks getaddrinfo before it connects and quotes its code; asking again waited on
    the resolver twice (a name server that does not answer: its whole timeout, twice). The
    driver's code is taken as said: here it disagrees with what the resolver would say now."""
    typo = "failed to resolve host 'localhost': [Errno -2] Name or service not known"
    assert host_unknown("postgresql+psycopg://u:p@localhost/x", typo)
    outage = f"failed to resolve host '{NO_SUCH}': [Errno -3] Temporary failure in name resolution"
    assert not host_unknown(f"postgresql+psycopg://u:p@{NO_SUCH}/x", outage)
    # a second host the message does not answer for is asked (psycopg quotes the last one)
    said = f"failed to resolve host '{NO_SUCH}': [Errno -2] Name or service not known"
    assert not host_unknown(f"postgresql+psycopg://u:p@localhost,{NO_SUCH}/x", said)
    assert host_unknown(f"postgresql+psycopg://u:p@other.invalid,{NO_SUCH}/x", said)


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("?sslmode=bogus", 'invalid sslmode value: "bogus"'),
        ("?keepalives=x", 'invalid integer value "x" for connection option "keepalives"'),
        ("?target_session_attrs=x", 'invalid target_session_attrs value: "x"'),
    ],
)
def test_a_connection_setting_libpq_refuses_is_bad_input_not_an_outage(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    query: str,
    said: str,
) -> None:
    """libpq refuses such a URL before it connects, and psycopg says "connection is bad: ..."
    with no SQLSTATE: it was exit 69, "the database server did not answer ... (the same
    command works once it is)", and a nightly script retried the typo for ever."""
    url = f"postgresql+psycopg://pomlia:s3cret@127.0.0.1:1/x{query}"
    code, out, err = pomlia_main(
        monkeypatch, capsys, "--home", str(tmp_path), "--db-url", url, "data", "list"
    )
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "cannot open the database" in err and said in err and "did not answer" not in err
    assert "expected connection settings that libpq and the server take" in err
    assert "s3cret" not in err


def test_a_port_out_of_range_is_bad_input() -> None:
    url = "postgresql+psycopg://pomlia:pomlia@127.0.0.1:99999/pomlia"
    assert not server_unreachable(
        url, failed_connect('connection is bad: invalid port number: "99999"')
    )


@pytest.mark.parametrize(
    "said",
    [
        'connection is bad: could not parse network address "999.1.1.1": Name or service not known',
        'connection failed: connection to server at "h" (10.0.0.1), port 5432 failed: channel '
        "binding required, but SSL not in use",
        'connection is bad: weak sslmode "require" may not be used with sslrootcert=system (use '
        '"verify-full")',
        'connection is bad: invalid "load_balance_hosts" value: "x"',
        "connection failed: server doesn't support GSSAPI encryption, but it was required",
    ],
)
def test_other_settings_libpq_refuses_are_bad_input(said: str) -> None:
    """A `hostaddr` that is no address, `channel_binding=require` on a server without TLS:
    exit 69, "the same command works once it is", for a setting that never will."""
    url = "postgresql+psycopg://u:p@127.0.0.1:5432/x"
    assert not server_unreachable(url, failed_connect(said))


@pytest.mark.parametrize(
    "said",
    [
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: Connection '
        "refused\n\tIs the server running on that host and accepting TCP/IP connections?",
        "connection failed: connection timeout expired",
        'connection failed: connection to server at "h" (10.0.0.1), port 5432 failed: server '
        "closed the connection unexpectedly",
        'connection failed: connection to server at "h" (10.0.0.1), port 5432 failed: received '
        "invalid response to SSL negotiation: H",
        "consuming input failed: SSL SYSCALL error: EOF detected",
        'connection failed: connection to server at "h", port 5432 failed: FATAL:  the database '
        "system is starting up",
        'connection failed: connection to server at "h", port 5432 failed: FATAL:  sorry, too '
        "many clients already",
    ],
)
def test_an_outage_is_not_read_as_a_refused_setting(said: str) -> None:
    """What libpq says of a server down, slow, gone or not taking connections now stays an
    outage (69: a nightly retry works once the server is back)."""
    url = "postgresql+psycopg://u:p@127.0.0.1:5432/x"
    assert server_unreachable(url, failed_connect(said))


@pytest.mark.postgres
def test_channel_binding_on_a_server_without_tls_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The test server takes no TLS: `?channel_binding=require` cannot ever connect to it."""
    from tests.fixtures.services import PG_URL, missing_service, pg_available

    if not pg_available():
        missing_service("PostgreSQL test server", "scripts/pg-local.sh start")
    url = f"{PG_URL}?channel_binding=require"
    code, out, err = pomlia_main(
        monkeypatch, capsys, "--home", str(tmp_path), "--db-url", url, "data", "list"
    )
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "channel binding required" in err and "did not answer" not in err
    assert "expected connection settings that libpq and the server take" in err
