"""Start ``pomlia serve`` as a child process on loopback and wait until it is ready.

Used by the tests (a real server over real HTTP), the benchmark and ``pomlia deploy --dry-run``
style checks. The child gets ``--port 0`` and an address file, so parallel servers never
collide on a port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from pomlia_hpc.errors import PomliaError


class LocalServer:
    """``with LocalServer(bundle_dir, log_dir) as srv: httpx.get(srv.url + "/ready")``."""

    def __init__(
        self,
        bundle: str | Path,
        log_dir: str | Path,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 90.0,
        stdout: Path | None = None,
    ) -> None:
        self.bundle = Path(bundle)
        self.log_dir = Path(log_dir)
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        # Address file and (unless ``stdout`` is given) the server's output; removed by stop().
        self._tmp = Path(tempfile.mkdtemp(prefix="pomlia-srv-"))
        self.address_file = self._tmp / "address"
        self.output = stdout or (self._tmp / "server.log")
        self._kept_tail = ""  # the output's tail once stop() removed the file
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pomlia_hpc",
            "serve",
            str(self.bundle),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-dir",
            str(self.log_dir),
            "--address-file",
            str(self.address_file),
            *self.args,
        ]

    def start(self) -> LocalServer:
        """Start the process and block until ``/ready`` answers 200."""
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise PomliaError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            if self.address_file.is_file():
                self.url = self.address_file.read_text().strip()
                try:
                    if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise PomliaError(f"server not ready after {self.startup_timeout_s} s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        """The last ``chars`` characters the server printed (kept after stop())."""
        try:
            return self.output.read_text(errors="replace")[-chars:]
        except OSError:
            return self._kept_tail[-chars:]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit; kill it after ``timeout`` s. Returns its exit code."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then wait (the server drains and closes its log); then remove the temporary
        directory (the output's tail stays readable through :meth:`log_tail`)."""
        code = None
        if self.proc is not None:
            self.signal(signal.SIGTERM)
            code = self.wait(timeout)
        if self._tmp.exists():
            self._kept_tail = self.log_tail(64 * 1024)
            shutil.rmtree(self._tmp, ignore_errors=True)
        return code

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
