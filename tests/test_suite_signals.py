"""The suite's Ctrl-C tests do not depend on how pytest was started.

Started as an asynchronous command of a shell without job control (`bash -c 'pytest ... &'`),
pytest and every process it starts had SIGINT ignored (SIG_IGN is inherited across exec), so
Python raised no KeyboardInterrupt and the tests that send Ctrl-C to a command failed
(test_cluster_local, test_interrupts, test_loop_stop, test_serve_messages). tests/conftest.py
now gives the pytest process Python's usual handler, which its children do not inherit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"


def test_ctrl_c_is_a_keyboard_interrupt_here_and_in_the_processes_started_from_here() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    child = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert child.stdout.strip() == "True", child


def test_a_suite_started_with_sigint_ignored_still_gets_ctrl_c() -> None:
    """The test above, in a pytest started with SIGINT ignored (as by `bash -c 'pytest &'`)."""
    test = test_ctrl_c_is_a_keyboard_interrupt_here_and_in_the_processes_started_from_here
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    # `trap "" INT` sets SIG_IGN, which exec passes on, as a shell does for `pytest &`.
    res = subprocess.run(
        ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *pytest, f"{__file__}::{test.__name__}"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
