"""``.ci/run``: what it starts in the background does not outlive it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from pomlia_hpc.processes import pid_alive

ROOT = Path(__file__).resolve().parents[1]

#: Stand-ins for the Makefile's targets: the lint fails once the op build has started.
MAKEFILE = """\
services venv test:
\t@true
lint:
\t@while [ ! -s child.pid ]; do sleep 0.05; done; exit 1
"""

#: A stand-in for the venv's python building the op: a long job with a child of its own (ninja).
PYTHON = """\
#!/bin/sh
sleep 300 &
echo $$ > python.pid
echo $! > child.pid
wait
"""


def _gone(pid: int, within_s: float = 30.0) -> bool:
    """Whether process ``pid`` ends within ``within_s`` seconds (a kill is delivered at once,
    the exit a moment later)."""
    end = time.monotonic() + within_s
    while pid_alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_a_failed_lint_takes_the_op_build_down_with_the_script(tmp_path: Path) -> None:
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "Makefile").write_text(MAKEFILE)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(PYTHON)
    python.chmod(0o755)
    proc = subprocess.run(
        [str(tmp_path / ".ci" / "run")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr  # the lint failed
    pids = [int((tmp_path / f"{n}.pid").read_text()) for n in ("python", "child")]
    try:
        assert all(_gone(pid) for pid in pids), "the op build outlived .ci/run"
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, 9)
    assert [p.name for p in tmp_path.glob("tmp.*")] == []  # the logs removed too
