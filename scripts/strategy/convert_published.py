"""Convert the published MedMNIST result tables into the knowledge base's long format.

How the copies under ``pomlia_hpc/strategy/data/`` were made (run once; kept so the conversion
can be checked and repeated)::

    python scripts/strategy/convert_published.py --wide MEDMNIST_PLUS_WIDE.csv \
        --v2 MEDMNIST_V2_BENCHMARK.csv --meta MEDMNIST2D_META.csv \
        --out pomlia_hpc/strategy/data

Inputs: the MedMNIST+ table of Doerrich et al. (Sci. Rep. 2025) transcribed as one wide row per
(dataset, training scheme, architecture, size) with ``acc_mean``/``acc_std``/``auc_mean``/
``auc_std`` in percent; the MedMNIST v2 benchmark of Yang et al. (Scientific Data 2023) as
(dataset, method, metric, value in [0, 1]); the 2D meta-features. The 3D data sets' meta-features
come from the ``medmnist`` package's ``INFO`` (the same source as the 2D file).

Outputs (long format, see docs/strategy.md): values as fractions in [0, 1].
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

SCHEME_MODE = {"end_to_end": "full", "linear_probing": "linear_probe", "knn_k11": "knn"}
TASK = {
    "multi-class": "multi-class",
    "binary-class": "binary",
    "multi-label, binary-class": "multi-label",
    "ordinal-regression": "ordinal",
}
LONG_COLUMNS = ["dataset", "arch", "init", "mode", "img_size", "metric", "value", "std", "n_seeds"]
META_COLUMNS = [
    "dataset",
    "task_type",
    "n_channels",
    "n_classes",
    "n_train",
    "n_val",
    "n_test",
    "image_size",
    "dims",
    "license",
]


def _pct(text: str) -> str:
    return f"{float(text) / 100:.6g}" if text.strip() else ""


def convert_plus(wide: Path, out: Path) -> int:
    rows = []
    with wide.open(newline="") as f:
        for r in csv.DictReader(f):
            base = {
                "dataset": r["dataset"],
                "arch": r["architecture"],
                "init": "pretrained",
                "mode": SCHEME_MODE[r["training_scheme"]],
                "img_size": r["img_size"],
                "n_seeds": r["n_seeds"],
            }
            for metric in ("acc", "auc"):
                if r[f"{metric}_mean"].strip():
                    value, std = _pct(r[f"{metric}_mean"]), _pct(r[f"{metric}_std"])
                    rows.append({**base, "metric": metric, "value": value, "std": std})
    _write(out, LONG_COLUMNS, rows)
    return len(rows)


def convert_v2(v2: Path, out: Path) -> int:
    rows = []
    method_re = re.compile(r"^(ResNet-\d+) (?:\((\d+)\)|\+ (.+))$")
    with v2.open(newline="") as f:
        for r in csv.DictReader(f):
            m = method_re.match(r["method"])
            if m:  # ResNet-18 (28) / ResNet-50 (224) / ResNet-18 + 3D ...
                arch = m.group(1) if m.group(2) else f"{m.group(1)}+{m.group(3)}"
                size = m.group(2) or "28"
                mode = "full"
            else:  # auto-sklearn, AutoKeras, Google AutoML Vision: their own search, 28 px
                arch, size, mode = r["method"], "28", "automl"
            rows.append(
                {
                    "dataset": r["dataset"].lower(),
                    "arch": arch,
                    "init": "scratch",
                    "mode": mode,
                    "img_size": size,
                    "metric": r["metric"].lower(),
                    "value": r["value"],
                    "std": "",
                    "n_seeds": "",
                }
            )
    _write(out, LONG_COLUMNS, rows)
    return len(rows)


def convert_meta(meta2d: Path, out: Path) -> int:
    rows = []
    with meta2d.open(newline="") as f:
        for r in csv.DictReader(f):
            rows.append(_meta_row(r["dataset"], r["task"], r["n_channels"], r["n_labels"], r, 2))
    import medmnist  # the 3D sets: the package's INFO, as for the 2D file

    for name, info in medmnist.INFO.items():
        if name.endswith("3d"):
            n = info["n_samples"]
            split = {"n_train": n["train"], "n_val": n["val"], "n_test": n["test"]}
            row = _meta_row(name, info["task"], info["n_channels"], len(info["label"]), split, 3)
            row["license"] = info.get("license", "")
            rows.append(row)
    _write(out, META_COLUMNS, rows)
    return len(rows)


def _meta_row(name: str, task: str, channels: object, labels: object, r: dict, dims: int) -> dict:
    return {
        "dataset": name,
        "task_type": TASK[task],
        "n_channels": channels,
        "n_classes": labels,
        "n_train": r["n_train"],
        "n_val": r["n_val"],
        "n_test": r["n_test"],
        "image_size": 28,
        "dims": dims,
        "license": r.get("license", ""),
    }


def _write(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wide", type=Path, required=True)
    ap.add_argument("--v2", type=Path, required=True)
    ap.add_argument("--meta", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    print("medmnist_plus rows", convert_plus(a.wide, a.out / "medmnist_plus_doerrich2025.csv"))
    print("medmnist_v2 rows", convert_v2(a.v2, a.out / "medmnist_v2_yang2023.csv"))
    print("meta-feature rows", convert_meta(a.meta, a.out / "medmnist_meta_features.csv"))


if __name__ == "__main__":
    main()
