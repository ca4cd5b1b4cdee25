"""The progress helper: with stdout redirected to a file (a Slurm job's output), lines appear
while the work runs, not only when it ends."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from pomlia_hpc.progress import progress

REPO = Path(__file__).resolve().parents[1]

# Reports one step, then waits for the test to create the file argv[1], then finishes.
SCRIPT = """
import sys, time
from pathlib import Path
from pomlia_hpc.progress import progress

go = Path(sys.argv[1])
with progress("training 'ae'", 3, unit="epochs") as bar:
    bar.update(1, note="loss 0.5")
    while not go.exists():
        time.sleep(0.05)
    bar.update(3)
"""


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], limit_s: float = 120) -> str:
    """The file's content once it contains ``text``; fails if the process ends first."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        content = path.read_text()
        if text in content:
            return content
        assert proc.poll() is None, f"the process ended before writing {text!r}:\n{content}"
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}:\n{path.read_text()}")


def test_redirected_output_shows_progress_before_the_process_ends(tmp_path: Path) -> None:
    out, go = tmp_path / "slurm-1.out", tmp_path / "go"
    with out.open("w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(go)],
            cwd=REPO,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "POMLIA_PROGRESS_EVERY_S": "0.2"},
        )
        try:
            text = _wait_for(out, "1/3 epochs (33%)", proc)
            assert "loss 0.5" in text
            # Nothing changes while the process waits: the heartbeat repeats the status.
            _wait_for(out, "(still working)", proc)
            assert proc.poll() is None
        finally:
            go.touch()
            assert proc.wait(timeout=120) == 0
    lines = out.read_text().splitlines()
    assert "training 'ae': 0/3 epochs (0%), " in lines[0]
    assert "3/3 epochs (100%)" in lines[-1]


def test_plain_lines_follow_changes_and_fine_counts_are_thinned() -> None:
    buf = io.StringIO()
    with progress("adding vectors", unit="vectors", stream=buf, min_interval_s=3600) as bar:
        for done in range(0, 1001, 100):
            bar.update(done, 1000)
    lines = buf.getvalue().splitlines()
    # The first status, then nothing until the end (one line per hour at most), then the end.
    assert len(lines) == 2, lines
    assert "adding vectors: 0 vectors, " in lines[0]
    assert "adding vectors: 1000/1000 vectors (100%), " in lines[1]

    buf = io.StringIO()
    with progress("study s", 2, unit="trials", stream=buf) as bar:
        bar.update(1, note="best run 3")
        bar.update(1, note="best run 3")  # no change: no line
        bar.line("run 4 small_cnn: crashed (out of memory)")
        bar.update(2)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert "1/2 trials (50%), " in lines[1] and lines[1].endswith(" elapsed; best run 3")
    assert lines[2].endswith("] run 4 small_cnn: crashed (out of memory)")


def test_a_resumed_study_starts_from_its_ended_trials() -> None:
    """`automl run --resume` printed `0/3 trials (0%)` before it listed the trials it adopted:
    its first line counts the trials that ended before (`records.ended_runs`)."""
    buf = io.StringIO()
    with progress("study s", 3, unit="trials", stream=buf, start=2):
        pass
    assert "study s: 2/3 trials (66%), " in buf.getvalue().splitlines()[0]


def test_a_terminal_gets_a_bar_and_no_plain_lines() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with progress("extracting", 4, unit="array tasks", console=console) as bar:
        bar.update(4)
        assert not bar.plain
    assert "elapsed" not in buf.getvalue() and "4/4" in buf.getvalue()


def test_say_writes_one_time_stamped_flushed_line() -> None:
    from pomlia_hpc.progress import say

    buf = io.StringIO()
    say("epoch 1/3 loss 0.5", buf)
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] epoch 1/3 loss 0\.5\n", buf.getvalue())


def test_a_reader_that_goes_away_does_not_stop_the_work() -> None:
    """`pomlia automl run ... | head -2`: the driver died of BrokenPipeError at its next line.
    The report now goes on into /dev/null, and the stream stays usable."""
    import os

    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the reader is gone before the first line
    with os.fdopen(write_fd, "w") as out:
        with progress("study s", 3, unit="trials", stream=out, console=Console(file=out)) as bar:
            bar.update(1)
            bar.line("run 1: ok")
            bar.update(3)
        out.write("still fine\n")
        out.flush()


_WRITER = """
import logging, sys, time
from pomlia_hpc.progress import guard_std_streams, say
guard_std_streams()
print("first", flush=True)
time.sleep(1.0)  # the reader reads one line and goes
for i in range(2000):
    say(f"line {i}")
    print("x" * 100)
    logging.warning("warned %d", i)
    print("to stderr", file=sys.stderr, flush=True)
open(sys.argv[1], "w").write("done")
"""


@pytest.mark.parametrize("both", [False, True], ids=["stdout", "2>&1"])
def test_writes_after_the_reader_went_do_not_kill_the_command(tmp_path: Path, both: bool) -> None:
    """say(), print and logging died of BrokenPipeError after `| head -1`, and with `2>&1`
    stderr (the same pipe) too: all output now goes to /dev/null and the command goes on."""
    root = Path(__file__).resolve().parents[1]
    marker = tmp_path / "done"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if both else subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"first"
    proc.stdout.close()
    err = b"" if proc.stderr is None else proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err.decode()[-2000:]
    assert marker.read_text() == "done"
    assert b"Traceback" not in err


def test_progress_on_stderr_leaves_the_final_table_on_stdout() -> None:
    """`automl run ... >o 2>e`: the study's status lines belong in e, its final table in o."""
    err, out = io.StringIO(), io.StringIO()
    err_console = Console(file=err, width=100)
    out_console = Console(file=out, width=100)
    with progress(
        "study s", 1, unit="trials", console=err_console, result_console=out_console,
        live_view=True,
    ) as bar:  # fmt: skip
        bar.update(1, view="FINAL TABLE")
    assert "study s: 1/1 trials" in err.getvalue() and "FINAL TABLE" not in err.getvalue()
    assert out.getvalue().strip() == "FINAL TABLE"
    # A live table on a terminal's stderr: a redirected stdout still gets the final table.
    err_tty = Console(file=io.StringIO(), force_terminal=True, width=100)
    out = io.StringIO()
    with progress(
        "study s", 1, unit="trials", console=err_tty, result_console=Console(file=out),
        live_view=True,
    ) as bar:  # fmt: skip
        bar.update(1, view="FINAL TABLE")
    assert out.getvalue().strip() == "FINAL TABLE"
