"""CPU time of the gate's paired bootstrap on 3,000 images (docs/BENCHMARKS.md): AUC and macro
F1, binary and five classes, at alpha 0.05 (2,000 resamples) and 1e-4 (200,000).

    python scripts/bench/gate_bootstrap.py
"""

from __future__ import annotations

import time

import numpy as np

from pomlia_hpc.loop.bootstrap import paired_bootstrap


def main() -> None:
    """Print one line per case: images, classes, alpha, resamples, CPU seconds per metric."""
    rng = np.random.default_rng(1)
    for n, classes, task, alpha in [
        (3000, 2, "binary", 0.05),
        (3000, 5, "multi-class", 0.05),
        (3000, 2, "binary", 1e-4),
    ]:
        y = rng.integers(0, classes, n)[:, None]
        a = rng.normal(size=(n, classes))
        b = a + rng.normal(scale=0.5, size=(n, classes))
        for metric in ("auc", "f1_macro"):
            t = time.process_time()
            got = paired_bootstrap(metric, task, y, a, b, alpha)
            took = time.process_time() - t
            print(
                f"{n} {task} ({classes}) alpha {alpha:g}: {got.resamples} resamples, "
                f"{metric} {took:.2f} s CPU"
            )


if __name__ == "__main__":
    main()
