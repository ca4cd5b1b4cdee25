"""Process checks on processes whose command name is not UTF-8: the kernel cuts a command
name at 15 bytes, also in the middle of a character, and ``/proc/<pid>/stat`` then holds
bytes no UTF-8 decoder takes."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pomlia_hpc.processes import ignores_signal, pid_alive, process_start_id


@pytest.fixture
def cut_name(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``sleep`` run under a name of eight 2-byte letters (16 bytes: its 15-byte command name
    ends in half a letter), with SIGINT ignored (as a background job of a script)."""
    name = tmp_path / ("\u00e4" * 8)
    name.symlink_to("/bin/sleep")
    proc = subprocess.Popen(
        [str(name), "30"], preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    )
    deadline = time.monotonic() + 10  # until the exec has set the command name
    while b"\xc3" not in Path(f"/proc/{proc.pid}/stat").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_process_whose_name_is_not_utf8_is_checked(cut_name: subprocess.Popen[bytes]) -> None:
    """pid_alive raised UnicodeDecodeError for such a process: every stale-temporary sweep
    (each atomic folder publish) and liveness check that met its pid failed with a traceback;
    ignores_signal said False for a process that ignores SIGINT."""
    assert pid_alive(cut_name.pid)
    assert process_start_id(cut_name.pid) is not None
    assert ignores_signal(cut_name.pid, signal.SIGINT)
