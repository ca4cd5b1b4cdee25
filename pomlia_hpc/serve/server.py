"""Running the app under uvicorn, and finding out where it listens.

The listening socket is bound here, before uvicorn starts, so ``port: 0`` picks a free port and
the real address is known. Once the model is loaded the address is printed (``serving NAME at
http://HOST:PORT``) and, if asked, written to ``address_file`` (temp name, then rename), which
is how the sbatch script and the tests find a server.

SIGTERM / SIGINT: uvicorn stops accepting connections, closes idle ones and waits up to
``graceful_timeout_s`` (default 3 s, below Slurm's KillWait) for in-flight requests; a body
read still waiting one second before that ends gets a JSON 503 (the server is stopping, send
it again) and its connection is closed. Then the app's lifespan answers anything still queued
and closes the prediction log. After SIGTERM the process prints ``stopped (SIGTERM)`` and
exits 0; after SIGINT (Ctrl-C) it prints ``stopped (SIGINT)`` and the signal is re-raised, as
uvicorn does (``pomlia serve`` then exits 130).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Generator
from pathlib import Path

import uvicorn

from pomlia_hpc.errors import ConfigError
from pomlia_hpc.files import make_private_dirs, probe_writable, write_atomic
from pomlia_hpc.serve.app import ServingApp, create_app
from pomlia_hpc.serve.config import ServeConfig
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.formats import quiet_pillow_warnings
from pomlia_hpc.serve.guards import guarded_protocol


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: a free one); an address that
    cannot be bound (unknown host, port in use) is one :class:`ConfigError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on host '{host}' port {port} ({exc.strerror or exc}): expected an "
            "address of this machine and a free port (0: any free one)"
        ) from exc
    sock.listen(2048)  # connections wait in the backlog while the model loads
    sock.set_inheritable(True)
    return sock


def check_log_dir(log_dir: Path) -> None:
    """Create the prediction log folder ``log_dir`` if needed and check that a file can be
    written there: a folder that cannot (read-only, no permission) is one
    :class:`ConfigError` naming it, before the server binds or loads anything. The folders
    made here are 0700 (the log is clinical data); existing ones keep their mode."""
    try:
        # Private from the start: made with the umask here, the log's own private mkdir
        # afterwards would find them existing and leave them readable by all.
        make_private_dirs(log_dir)
        probe_writable(log_dir)
    except OSError as exc:
        raise ConfigError(
            f"prediction log folder {log_dir} cannot be written ({exc.strerror or exc}); "
            "the server logs every prediction before answering: make it writable or choose "
            "another folder with --log-dir"
        ) from exc


def public_address(host: str, port: int) -> str:
    """``http://HOST:PORT`` that other machines can use (the node's name for 0.0.0.0)."""
    shown = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def write_address(path: Path, address: str) -> None:
    """Write ``address`` + newline to ``path`` atomically."""
    write_atomic(path, address + "\n")


#: Seconds of the graceful shutdown left for answering once body reads are cut off.
DRAIN_ANSWER_S = 1.0


class _DrainingServer(uvicorn.Server):
    """Uvicorn re-raises SIGTERM after its graceful shutdown, so the process dies "killed by
    signal". Once the app has drained and closed its log that is misleading (a Slurm job or a
    test sees a crash), so a captured SIGTERM ends the process with exit code 0 instead."""

    #: Whether a SIGTERM stopped the server (then it says so in one line and exits 0).
    stopped_by_sigterm = False

    def __init__(self, config: uvicorn.Config, app: ServingApp) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Body reads still waiting one second before the graceful timeout ends get a JSON 503
        # and the connection is closed: a client trickling its upload kept the server for the
        # whole timeout, then uvicorn cancelled it (text/plain 500, a logged traceback).
        grace = self.config.timeout_graceful_shutdown or 0
        self.app.drain(max(0.0, grace - DRAIN_ANSWER_S))
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                self.stopped_by_sigterm = signal.SIGTERM in captured
                if signal.SIGINT in captured:
                    # Drained by now; said before uvicorn re-raises it (and also when the
                    # process inherited SIGINT ignored, so the re-raise ends nothing).
                    print("stopped (SIGINT)", flush=True)
                captured[:] = [s for s in captured if s != signal.SIGTERM]


def _single_threaded_blas() -> None:
    """One BLAS thread: the server's numpy products are tiny (the fingerprint thumbnails), and
    OpenBLAS's extra threads spin after each call, taking cores from onnxruntime and the event
    loop."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not installed: BLAS keeps its default
        return
    threadpool_limits(1, user_api="blas")


def run_server(
    bundle: ExportedBundle, config: ServeConfig, log_dir: Path, *, follow: Path | None = None
) -> None:
    """Serve ``bundle`` until SIGTERM/SIGINT; blocks. ``follow``: the link to watch for a
    hot swap (see :mod:`pomlia_hpc.serve.app`)."""
    if config.address_file is not None:  # written once ready: its folder must exist by then
        try:
            config.address_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"address file {config.address_file}: its folder cannot be created "
                f"({exc.strerror or exc}); expected a writable path"
            ) from exc
    check_log_dir(log_dir)
    sock = bind_socket(config.host, config.port)
    port = int(sock.getsockname()[1])
    address = public_address(config.host, port)

    def on_ready() -> None:
        print(f"serving {bundle.name} ({bundle.version}) at {address}", flush=True)
        print(f"prediction log: {log_dir}", flush=True)
        if config.address_file is not None:
            write_address(config.address_file, address)

    _single_threaded_blas()
    quiet_pillow_warnings()  # once, before the decode threads start
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    app = create_app(bundle, config, log_dir, on_ready=on_ready, follow=follow)
    server = _DrainingServer(
        uvicorn.Config(
            app,
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=config.graceful_timeout_whole_s,
            # uvloop when installed.
            loop="auto",
            # httptools (the C parser halves per-request overhead) with bounds on the request
            # head and its time (see serve.guards); uvicorn itself has none for httptools.
            http=guarded_protocol(config.max_head_bytes, config.max_headers, config.head_timeout_s),
            backlog=2048,
            # No WebSocket: the API has no such route, and an upgrade switched the connection
            # to wsproto, past the guards, for an empty text 403. Now it is plain HTTP.
            ws="none",
        ),
        app,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if config.address_file is not None:
            _remove_own_address(config.address_file, address)
    if server.stopped_by_sigterm:
        # uvicorn logs its shutdown at INFO, below the level it runs at: without this line a
        # Slurm output file ends at "serving ..." and a stop looks like a hang or a crash.
        print("stopped (SIGTERM)", flush=True)


def _remove_own_address(path: Path, address: str) -> None:
    """Remove the address file only if it still holds this server's address: during a
    switch on Slurm the new job has already written its own, which must stay."""
    try:
        if path.read_text().strip() == address:
            path.unlink(missing_ok=True)
    except OSError:
        pass
