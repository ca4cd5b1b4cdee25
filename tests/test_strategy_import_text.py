"""`strategy import`: data set names follow the name rule of `data add`, and text cells may
not hold control characters nor start like a spreadsheet formula."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pomlia_hpc.cli import main
from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import KbResult, KbSource, Registry
from pomlia_hpc.strategy import kb
from pomlia_hpc.workspace import Workspace

DATA = Path(__file__).resolve().parents[1] / "pomlia_hpc" / "strategy" / "data"
HEADER = "dataset,arch,init,mode,img_size,metric,value\n"
META = "dataset,task_type,n_channels,n_classes,n_train,license\na,multi-class,3,8,1000,CC BY\n"
GOOD = HEADER + "a,ResNet-18,scratch,full,28,acc,0.91\n"
COLS = "dataset,arch,init,mode,img_size,metric,value,meta_task_type,meta_n_channels,"
COLS += "meta_n_classes,meta_n_train,meta_notes\n"


def _nothing_imported(reg: Registry) -> bool:
    with reg.session() as s:
        results = s.scalar(select(func.count()).select_from(KbResult))
        sources = s.scalar(select(func.count()).select_from(KbSource))
    return results == 0 and sources == 0


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ("=cmd|x,VGG16,pretrained,full,28,acc,0.9\n", "dataset"),
        ("../etc,VGG16,pretrained,full,28,acc,0.9\n", "dataset"),
        ("a b,VGG16,pretrained,full,28,acc,0.9\n", "dataset"),
        ("12,VGG16,pretrained,full,28,acc,0.9\n", "dataset"),
        ("a,=HYPERLINK(1),pretrained,full,28,acc,0.9\n", "arch"),
        ("a,+1,pretrained,full,28,acc,0.9\n", "arch"),
        ("a,@SUM(1),pretrained,full,28,acc,0.9\n", "arch"),
        ("a,VGG16,-2+3,full,28,acc,0.9\n", "init"),
        ("a,VGG\x1b[31m16,pretrained,full,28,acc,0.9\n", "arch"),
        ("a,VGG\u202e61,pretrained,full,28,acc,0.9\n", "arch"),
        ("a,VGG16,pretrained,fu\tll,28,acc,0.9\n", "mode"),
    ],
)
def test_bad_names_and_text_are_one_error_and_nothing_imported(
    registry: Registry, tmp_path: Path, row: str, column: str
) -> None:
    """`=cmd|x` as a data set and `=...` as an architecture imported fine: the file, line and
    column are named, and the import (one transaction) imports nothing."""
    path = tmp_path / "r.csv"
    path.write_text(GOOD + row)
    meta = tmp_path / "m.csv"
    meta.write_text(META)
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "t", meta_path=meta)
    msg = str(err.value)
    assert f"{path}: line 3, column '{column}'" in msg and "nothing was imported" in msg, msg
    assert _nothing_imported(registry)


@pytest.mark.parametrize(
    ("meta", "where"),
    [
        (META.replace("CC BY", "=1+1"), "line 2, column 'license'"),
        (META.replace("CC BY", "CC\x07BY"), "line 2, column 'license'"),
        (META + "=x,binary,1,2,10,\n", "line 3, column 'dataset'"),
    ],
)
def test_bad_meta_file_cells_are_refused(
    registry: Registry, tmp_path: Path, meta: str, where: str
) -> None:
    path = tmp_path / "m.csv"
    path.write_text(meta)
    table = tmp_path / "r.csv"
    table.write_text(GOOD)
    with pytest.raises(InputError, match="nothing was imported") as err:
        kb.import_table(registry, table, "t", meta_path=path)
    assert f"{path}: {where}" in str(err.value)
    assert _nothing_imported(registry)


def test_bad_meta_column_text_is_refused(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(COLS + "a,r,s,full,28,acc,0.9,binary,1,2,100,-danger\n")
    with pytest.raises(InputError, match="line 2, column 'meta_notes': '-danger' is not valid"):
        kb.import_table(registry, path, "t")
    assert _nothing_imported(registry)


def test_text_that_only_looks_odd_is_kept(registry: Registry, tmp_path: Path) -> None:
    """Architectures such as `CLIP-ViT-B/16`, `ResNet-18+2.5D`, `Google AutoML Vision` and a
    licence with `<` inside are plain text, and data set names with `.`, `-`, `_` are names."""
    rows = [
        "a.b-c_1,CLIP-ViT-B/16,pretrained,linear_probe,224,acc,0.9,binary,1,2,100,n < 5",
        "a.b-c_1,ResNet-18+2.5D,scratch,full,28,acc,0.8,binary,1,2,100,n < 5",
        "a.b-c_1,Google AutoML Vision,scratch,automl,28,acc,0.7,binary,1,2,100,n < 5",
    ]
    path = tmp_path / "ok.csv"
    path.write_text(COLS + "\n".join(rows) + "\n")
    assert kb.import_table(registry, path, "t").n_results == 3
    got = kb.load(registry, "acc", ["t"])
    assert {o.strategy["arch"] for o in got.observations} >= {"CLIP-ViT-B/16", "ResNet-18+2.5D"}
    assert got.meta["a.b-c_1"]["notes"] == "n < 5"


def test_shipped_tables_follow_the_rules(reg: Registry) -> None:
    meta = DATA / "medmnist_meta_features.csv"
    for table in ("medmnist_plus_doerrich2025.csv", "medmnist_v2_yang2023.csv"):
        assert kb.import_table(reg, DATA / table, table.split("_")[1], meta_path=meta).n_results


def test_cli_refuses_in_one_line(
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The tester's file: `=cmd|x` as data set, an <img> tag as architecture."""
    path = tmp_path / "evil.csv"
    path.write_text(HEADER + "=cmd|x,<img src=x onerror=alert(1)>,pretrained,full,28,acc,0.9\n")
    argv = ["pomlia", "--home", str(workspace.home), "strategy", "import", str(path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--source", "evil"])
    with pytest.raises(SystemExit) as ex:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert ex.value.code == 2 and "Traceback" not in err, err
    assert f"error: {path}: line 2, column 'dataset': '=cmd|x' is not valid" in err, err
    assert "expected a data set name as `data add` takes: letters, digits" in err, err
