"""The monitor's look-up of late labels' predictions over a month of generated logs: wall and
CPU time of :func:`pomlia_hpc.monitor.labels.join_labels` for a window of the last day with
one label of a prediction two days old, alone and beside a label whose prediction is not in the
7-day look-back (an id without a time, as servers before timed ids issued; a timed one older
than the look-back; a timed one whose file was deleted).

    python scripts/bench/label_lookup.py FOLDER [--per-day 20000]

FOLDER is made on the first run (one file a day, as a server restarted daily writes them) and
read again by later runs (run twice: the second reads from the page cache)."""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from pomlia_hpc.monitor.labels import DEFAULT_LOOKBACK, Arrivals, join_labels
from pomlia_hpc.serve import ids
from pomlia_hpc.serve.records import FeedbackLine

DAYS = 30
END = datetime(2026, 12, 5, tzinfo=UTC)
FINGERPRINT = [round(i / 97, 6) for i in range(48)]


def write_month(folder: Path, per_day: int) -> None:
    """``DAYS`` daily files of ``per_day`` predictions each, ending at ``END``."""
    folder.mkdir(parents=True)
    for back in range(DAYS, 0, -1):
        day = END - timedelta(days=back)
        path = folder / f"{day:%Y%m%dT%H%M%S}-node-{back}-0000.jsonl"
        with path.open("wb") as f:
            for i in range(per_day):
                t = day + timedelta(seconds=i * 86400 / per_day)
                rec = {
                    "type": "prediction",
                    "id": ids.prediction_ids(1, t.timestamp())[0],
                    "time": t.isoformat(timespec="microseconds"),
                    "model": "m",
                    "model_version": "1",
                    "deployment": None,
                    "fingerprint_kind": "k",
                    "fingerprint": FINGERPRINT,
                    "output": {"label": "a", "label_index": 0, "probabilities": [0.9, 0.1]},
                }
                f.write(orjson.dumps(rec) + b"\n")
        last = (day + timedelta(days=1)).timestamp()
        os.utime(path, (last, last))


def feedback(pid: str, when: datetime) -> FeedbackLine:
    return FeedbackLine(
        id="0" * 32,
        time=when.isoformat(),
        prediction_id=pid,
        model="m",
        model_version="1",
        deployment=None,
        label="a",
        label_index=0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-day", type=int, default=20_000)
    args = parser.parse_args()
    # The generated month lies before the first timed ids: let its ids count as timed.
    ids.FIRST_ISSUE = (END - timedelta(days=DAYS + 1)).timestamp()
    if not args.folder.exists():
        write_month(args.folder, args.per_day)
    files = sorted(args.folder.glob("*.jsonl"))
    with files[-3].open("rb") as f:  # two days before the window
        known = orjson.loads(f.readline())["id"]
    since = END - timedelta(days=1)
    cases = {
        "known only": [known],
        "+ untimed unknown id": [known, os.urandom(16).hex()],
        "+ id 10 days before": [
            known,
            ids.prediction_ids(1, (since - timedelta(days=10)).timestamp())[0],
        ],
        "+ id 3 days before, not logged": [
            known,
            ids.prediction_ids(1, (since - timedelta(days=3, hours=12)).timestamp())[0],
        ],
    }
    for what, pids in cases.items():
        got = Arrivals()
        for pid in pids:
            got.add(feedback(pid, since + timedelta(hours=1)))
        t0, c0 = time.perf_counter(), time.process_time()
        join = join_labels(
            got, {}, [args.folder], model="m", version="1", since=since, lookback=DEFAULT_LOOKBACK
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"{what:32s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  "
            f"tested {len(join.tested)} unknown {join.unknown}"
        )


if __name__ == "__main__":
    main()
