"""One end-to-end request against a running server: read its card, send one image that fits
it, check the answer. Used by the Apptainer ``%test``; works against any running server.

``python -m pomlia_hpc.serve.smoke --url http://host:8000`` or ``--address-file FILE`` (waits
for the file and for ``/ready``). Exit 0 and one summary line on success, 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def wait_ready(url: str | None, address_file: Path | None, timeout_s: float) -> str:
    """The server's base URL once ``/ready`` answers 200; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if url is None and address_file is not None and address_file.is_file():
            url = address_file.read_text().strip() or None
        if url is not None:
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise TimeoutError(f"no ready server at {url or address_file} after {timeout_s:.0f} s")


def smoke(url: str) -> dict[str, Any]:
    """Send one mid-grey image shaped as the card says; return the prediction."""
    card = httpx.get(f"{url}/v1/model", timeout=10).raise_for_status().json()
    size, channels = int(card["input"]["image_size"]), int(card["input"]["channels"])
    buf = io.BytesIO()
    np.save(buf, np.full((size, size, channels), 128, dtype=np.uint8))
    resp = httpx.post(
        f"{url}/v1/predict",
        content=buf.getvalue(),
        headers={"content-type": "application/x-npy"},
        timeout=30,
    )
    resp.raise_for_status()
    body = resp.json()
    preds = body["predictions"]
    if len(preds) != 1 or set(preds[0]["probabilities"]) != set(card["label_names"]):
        raise ValueError(f"unexpected answer: {body}")
    return {"model": body["model"], "version": body["model_version"], **preds[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url")
    parser.add_argument("--address-file", type=Path)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    args = parser.parse_args(argv)
    if args.url is None and args.address_file is None:
        parser.error("give --url or --address-file")
    try:
        url = wait_ready(args.url, args.address_file, args.timeout)
        out = smoke(url)
    except (TimeoutError, httpx.HTTPError, ValueError, KeyError) as exc:
        print(f"smoke test FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"smoke test ok: {url} model {out['model']} ({out['version']}) -> {out['label']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
