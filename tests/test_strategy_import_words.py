"""`strategy import`: a known initial-weights or training-mode word is read in any case and
with ``-`` or a space for ``_`` (``Linear_Probe``, ``linear probe``, ``k-NN``) and stored as
the knowledge base spells it; other words are kept as written. Column names, metrics and
``extra_data`` are read in any case."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import KbDataset, KbResult, Registry
from pomlia_hpc.strategy import kb

HEADER = "dataset,arch,init,mode,img_size,metric,value,"
HEADER += "meta_task_type,meta_n_channels,meta_n_classes,meta_n_train\n"
META = "multi-class,1,3,100"


def _table(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "".join(f"{r},{META}\n" for r in rows))
    return path


def _stored(reg: Registry) -> list[tuple[str, str]]:
    with reg.session() as s:
        return [(r["init"], r["mode"]) for r in s.scalars(select(KbResult.strategy))]


def test_known_words_in_another_spelling_are_stored_as_the_knowledge_base_spells_them(
    registry: Registry, tmp_path: Path
) -> None:
    """`ImageNet`/`Linear Probe` was imported as a strategy of its own, which the AutoML space
    could not express ("training mode 'Linear Probe' is not in the AutoML space")."""
    path = _table(
        tmp_path,
        "a,ResNet-18,ImageNet,Linear Probe,28,acc,0.9",
        "a,ResNet-18,Pretrained,k-NN,28,acc,0.8",
        "a,ResNet-18,SCRATCH,Freeze-Unfreeze,28,acc,0.7",
        "a,ResNet-18,scratch,Frozen,28,acc,0.6",
    )
    kb.import_table(registry, path, "t")
    assert sorted(_stored(registry)) == [
        ("imagenet", "linear_probe"),
        ("pretrained", "knn"),
        ("scratch", "Frozen"),  # not a known word: as written
        ("scratch", "freeze_unfreeze"),
    ]


def test_one_strategy_spelled_in_two_cases_is_refused(registry: Registry, tmp_path: Path) -> None:
    """`Pretrained,Linear_Probe` and `pretrained,linear_probe` on one data set and metric were
    imported as two strategies (two cells of the matrix for one)."""
    path = _table(
        tmp_path,
        "a,ResNet-18,Pretrained,Linear_Probe,28,acc,0.9",
        "a,ResNet-18,pretrained,linear_probe,28,acc,0.8",
    )
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "t")
    msg = str(err.value)
    assert f"{path}: line 3: duplicates line 2" in msg and "nothing was imported" in msg, msg
    assert _stored(registry) == []


def test_a_source_imported_before_is_read_in_the_known_spelling(
    registry: Registry, tmp_path: Path
) -> None:
    """Rows stored as written by an earlier version (`Linear_Probe`) are one strategy with
    the same strategy spelled as the knowledge base spells it."""
    kb.import_table(
        registry, _table(tmp_path, "a,resnet18,pretrained,linear_probe,28,acc,0.9"), "t"
    )
    with registry.session() as s:  # as an earlier version stored `Pretrained,Linear_Probe`
        old = {"arch": "resnet18", "init": "Pretrained", "mode": "Linear_Probe"}
        old |= {"img_size": 28, "extra_data": "none"}
        s.execute(update(KbResult).values(strategy=old))
    (obs,) = kb.load(registry, "acc", sources=["t"]).observations
    assert (obs.strategy["init"], obs.strategy["mode"]) == ("pretrained", "linear_probe")
    fresh = {"arch": "resnet18", "init": "pretrained", "mode": "linear_probe"}
    assert obs.key == kb.strategy_key(fresh | {"img_size": 28, "extra_data": "none"})


def test_column_names_metric_and_extra_data_are_read_in_any_case(
    registry: Registry, tmp_path: Path
) -> None:
    """A spreadsheet's `Dataset,Arch,...` header was refused as "missing column(s) dataset,
    arch, ..." and `Nearest` as not `none or nearest`, though the metric was read in any case."""
    path = tmp_path / "r.csv"
    path.write_text(
        "Dataset,Arch,Init,Mode,Img_Size,Metric,Value,Extra_Data,"
        "Meta_Task_Type,Meta_N_Channels,Meta_N_Classes,Meta_N_Train\n"
        f"a,resnet18,scratch,full,28,ACC,0.9,Nearest,{META}\n"
    )
    kb.import_table(registry, path, "t")
    with registry.session() as s:
        (row,) = s.execute(select(KbResult.strategy, KbResult.metric)).all()
    assert row.strategy["extra_data"] == "nearest" and row.metric == "acc"


def test_a_value_differing_from_a_source_imported_before_in_another_spelling_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    """The check against other sources reads their rows as the knowledge base spells them:
    a source stored as an earlier version wrote it (`Pretrained,Linear_Probe`) and a new
    one's other value for `pretrained,linear_probe` would be two values of one cell."""
    kb.import_table(
        registry, _table(tmp_path, "a,resnet18,pretrained,linear_probe,28,acc,0.9"), "t"
    )
    old = {"arch": "resnet18", "init": "Pretrained", "mode": "Linear_Probe"}
    old |= {"img_size": 28, "extra_data": "none"}
    with registry.session() as s:  # as an earlier version stored it
        s.execute(update(KbResult).values(strategy=old, strategy_key=kb.strategy_key(old)))
    new = tmp_path / "new"
    new.mkdir()
    path = _table(new, "a,resnet18,pretrained,linear_probe,28,acc,0.8")
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "u")
    msg = str(err.value)
    assert f"{path}: line 2, column 'value': 0.8 for data set 'a'" in msg, msg
    assert "source 't' gives 0.9" in msg and "nothing was imported" in msg, msg
    assert _stored(registry) == [("Pretrained", "Linear_Probe")]


def test_a_data_set_name_as_long_as_data_add_takes_is_imported(
    registry: Registry, tmp_path: Path
) -> None:
    """A name of 65-128 characters, which `data add` registers, was refused as "at most 64"."""
    name = "d" * 128
    path = tmp_path / "r.csv"
    head = "dataset,arch,init,mode,img_size,metric,value,"
    meta = "meta_task_type,meta_n_channels,meta_n_classes,meta_n_train"
    path.write_text(f"{head}{meta}\n{name},resnet18,scratch,full,28,acc,0.9,{META}\n")
    kb.import_table(registry, path, "t")
    with registry.session() as s:
        assert s.scalars(select(KbDataset.name)).all() == [name]
    path.write_text(f"{head}{meta}\n{name}d,resnet18,scratch,full,28,acc,0.9,{META}\n")
    with pytest.raises(InputError, match="at most 128"):
        kb.import_table(registry, path, "t2")
