"""`strategy import` of files a spreadsheet or a second paper produces: spaces in the header, a
semicolon-separated file, one strategy spelled two ways, two sources that disagree, paths."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from pomlia_hpc.cli import main
from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import KbResult, KbSource, Registry
from pomlia_hpc.registry.db import lock_name
from pomlia_hpc.strategy import kb, longformat
from pomlia_hpc.strategy.service import evaluate_source
from pomlia_hpc.workspace import Workspace

META = "dataset,task_type,n_channels,n_classes,n_train\na,multi-class,3,8,1000\nb,binary,1,2,500\n"
HEADER = "dataset,arch,init,mode,img_size,metric,value\n"


def _write(tmp_path: Path, text: str, name: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _counts(reg: Registry) -> tuple[int, int]:
    with reg.session() as s:
        n_sources = s.scalar(select(func.count()).select_from(KbSource))
        n_results = s.scalar(select(func.count()).select_from(KbResult))
    return int(n_sources or 0), int(n_results or 0)


def test_a_header_with_spaces_after_the_commas_is_read(registry: Registry, tmp_path: Path) -> None:
    """`dataset, arch, init, ...` passed the header check but every cell but the first read as
    empty: "line 2, column 'metric': '' is not valid; expected a non-empty value"."""
    header = HEADER.replace(",", ", ")
    path = _write(tmp_path, header + "a, resnet18, scratch, full, 28, acc, 0.9\n", "r.csv")
    meta = _write(tmp_path, META.replace(",", " , "), "m.csv")
    assert kb.import_table(registry, path, "t", meta_path=meta).n_results == 1
    (obs,) = kb.load(registry, "acc", ["t"]).observations
    assert (obs.dataset, obs.strategy["arch"], obs.value) == ("a", "resnet18", 0.9)


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_file_separated_by_semicolons_is_named_so(
    registry: Registry, tmp_path: Path, sep: str
) -> None:
    """A spreadsheet of a comma-decimal locale saves `;`-separated files: the error listed
    every column as missing."""
    text = HEADER.replace(",", sep) + sep.join(
        ["a", "resnet18", "scratch", "full", "28", "acc", "0,9"]
    )
    path = _write(tmp_path, text + "\n", "r.csv")
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "t", meta_path=_write(tmp_path, META, "m.csv"))
    msg = str(err.value)
    assert f"{path}: line 1: one column" in msg and f"separated by {sep!r}" in msg, msg
    assert "expected a CSV file separated by commas" in msg and "nothing was imported" in msg
    assert _counts(registry) == (0, 0)


def test_one_strategy_spelled_two_ways_in_one_file_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    """`ResNet-18` and `resnet18` are one strategy of the knowledge base: both rows were
    imported and the recommender used whichever came last."""
    text = HEADER + "a,ResNet-18,scratch,full,28,acc,0.9\na,resnet18,scratch,full,28,acc,0.5\n"
    path = _write(tmp_path, text, "r.csv")
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "t", meta_path=_write(tmp_path, META, "m.csv"))
    msg = str(err.value)
    assert f"{path}: line 3, column 'arch': 'resnet18' is the strategy of line 2" in msg, msg
    assert "nothing was imported" in msg
    assert _counts(registry) == (0, 0)


def test_a_value_another_source_gives_differently_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    """Two sources with one (data set, strategy, metric) and different values were both
    imported; the learner's matrix kept one of them, in an order no query fixed."""
    meta = _write(tmp_path, META, "m.csv")
    first = _write(tmp_path, HEADER + "a,ResNet-18,scratch,full,28,acc,0.9\n", "one.csv")
    kb.import_table(registry, first, "one", meta_path=meta)
    rows = "b,resnet18,scratch,full,28,acc,0.7\na,resnet-18,scratch,full,28,acc,0.8\n"
    path = _write(tmp_path, HEADER + rows, "two.csv")
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "two", meta_path=meta)
    msg = str(err.value)
    assert f"{path}: line 3, column 'value': 0.8 for data set 'a'" in msg, msg
    assert f"source 'one' gives 0.9 (line 2 of {first})" in msg and "nothing was imported" in msg
    assert _counts(registry) == (1, 1)
    # The same figure twice (the same results published again) and other cells are fine.
    same = _write(tmp_path, HEADER + rows.replace("0.8", "0.9"), "same.csv")
    assert kb.import_table(registry, same, "two", meta_path=meta).n_results == 2
    # Replacing a source does not conflict with its own old rows.
    again = _write(tmp_path, HEADER + "a,ResNet-18,scratch,full,28,acc,0.9\n", "again.csv")
    assert kb.import_table(registry, again, "two", meta_path=meta, replace=True).replaced == 2


def test_sources_record_the_absolute_path_of_their_file(
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`strategy sources` showed the path as typed (`data/r.csv`), meaningless from another
    folder; the registry records absolute paths."""
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder, HEADER + "a,resnet18,scratch,full,28,acc,0.9\n", "r.csv")
    _write(folder, META, "m.csv")
    monkeypatch.chdir(tmp_path)
    argv = ["pomlia", "--home", str(workspace.home), "strategy", "import", "data/r.csv"]
    monkeypatch.setattr(sys, "argv", [*argv, "--source", "rel", "--meta", "data/m.csv"])
    with pytest.raises(SystemExit) as ex:
        main()
    assert ex.value.code == 0, capsys.readouterr().err
    reg = Registry.open(workspace.db_url)
    (source,) = kb.list_sources(reg)
    reg.dispose()
    assert source.file == str(folder / "r.csv") and Path(source.file).is_absolute()


def test_eval_of_a_metric_the_source_has_no_values_of_names_its_metrics(
    registry: Registry, tmp_path: Path
) -> None:
    """`strategy eval --source S --metric f1_macro` on a table of ACC values said "needs at
    least 3 data sets with results; this selection has 0 (none)", not that the metric was
    the problem."""
    rows = "a,resnet18,scratch,full,28,acc,0.9\nb,resnet18,scratch,full,28,auc,0.8\n"
    path = _write(tmp_path, HEADER + rows, "r.csv")
    kb.import_table(registry, path, "t", meta_path=_write(tmp_path, META, "m.csv"))
    with pytest.raises(InputError) as err:
        evaluate_source(registry, "t", "f1_macro")
    msg = str(err.value)
    assert "source 't' has no results for metric 'f1_macro' (its metrics: acc, auc)" in msg, msg
    with pytest.raises(InputError, match="the registry has no counted run of a task with metric"):
        evaluate_source(registry, "registry", "f1_macro")


def test_a_file_of_more_rows_than_the_limit_is_refused_while_read(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 160,000-row file took 520 MB to import (every row is held until the transaction):
    a file of millions filled the memory before any message. The limit is checked while
    reading (lowered here, so the file stays small)."""
    monkeypatch.setattr(longformat, "MAX_ROWS", 3)
    rows = "".join(f"a,arch{i},scratch,full,28,acc,0.9\n" for i in range(4))
    path = _write(tmp_path, HEADER + rows, "r.csv")
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "t", meta_path=_write(tmp_path, META, "m.csv"))
    msg = str(err.value)
    assert f"{path}: line 5: more than 3 result rows" in msg and "nothing was imported" in msg
    assert _counts(registry) == (0, 0)
    path.write_text(HEADER + rows.split("\n", 1)[1])  # 3 rows: the limit itself is fine
    assert kb.import_table(registry, path, "t", meta_path=tmp_path / "m.csv").n_results == 3


@pytest.mark.postgres
def test_two_imports_at_once_of_values_that_disagree_do_not_both_pass(
    pg_url: str, tmp_path: Path
) -> None:
    """The checks against other sources ran before the import's transaction: two imports of
    different sources at once each checked before the other committed, and both were
    imported with values that disagree. Here import 'one' is held after its checks would
    have run (its own source's lock is taken by the test) while 'two' is imported: 'one'
    must then see 'two' and be refused."""
    meta = _write(tmp_path, META, "m.csv")
    one = _write(tmp_path, HEADER + "a,ResNet-18,scratch,full,28,acc,0.9\n", "one.csv")
    two = _write(tmp_path, HEADER + "a,resnet18,scratch,full,28,acc,0.8\n", "two.csv")
    reg = Registry.open(pg_url)
    failed: list[BaseException] = []

    def import_one() -> None:
        try:
            kb.import_table(reg, one, "one", meta_path=meta)
        except BaseException as exc:  # handed to the test's thread
            failed.append(exc)

    try:
        with reg.session() as held:
            lock_name(held, "kb-source:one")
            worker = threading.Thread(target=import_one)
            worker.start()
            _wait_for_a_waiting_lock(reg)
            kb.import_table(reg, two, "two", meta_path=meta)
        worker.join()
        assert len(failed) == 1 and isinstance(failed[0], InputError), failed
        assert "source 'two' gives 0.8" in str(failed[0]), failed[0]
        assert _counts(reg) == (1, 1)
    finally:
        reg.dispose()


def _wait_for_a_waiting_lock(reg: Registry) -> None:
    """Return once a session waits for an advisory lock (import 'one' is held), or fail."""
    for _ in range(6000):
        with reg.session() as s:
            waiting = s.scalar(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            )
        if waiting:
            return
        time.sleep(0.01)
    raise AssertionError("import 'one' never waited for its source's lock")


def test_a_refused_value_is_shown_apart_from_the_one_it_differs_from(
    registry: Registry, tmp_path: Path
) -> None:
    """Values shown to 6 significant digits read the same where they differ in the 7th: the
    refusal said "0.912345 ..., but source 'one' gives 0.912345"."""
    meta = _write(tmp_path, META, "m.csv")
    one = _write(tmp_path, HEADER + "a,resnet18,scratch,full,28,acc,0.9123451\n", "one.csv")
    kb.import_table(registry, one, "one", meta_path=meta)
    two = _write(tmp_path, HEADER + "a,resnet18,scratch,full,28,acc,0.9123449\n", "two.csv")
    with pytest.raises(InputError) as err:
        kb.import_table(registry, two, "two", meta_path=meta)
    msg = str(err.value)
    assert "'value': 0.9123449 for data set 'a'" in msg and "gives 0.9123451" in msg, msg


def test_meta_columns_and_a_meta_file_together_are_refused(
    registry: Registry, tmp_path: Path
) -> None:
    """With `meta_` columns, the `--meta` file was read but its values went unused without a
    word (a binary data set of 3 channels there was imported as the columns' multi-class one
    of 1), and the source recorded the file as its meta-features' file."""
    cols = HEADER.strip() + ",meta_task_type,meta_n_channels,meta_n_classes,meta_n_train\n"
    path = _write(
        tmp_path, cols + "b,resnet18,scratch,full,28,acc,0.5,multi-class,1,5,100\n", "r.csv"
    )
    meta = _write(tmp_path, META, "m.csv")
    with pytest.raises(InputError) as err:
        kb.import_table(registry, path, "t", meta_path=meta)
    msg = str(err.value)
    assert msg.startswith(f"{path}: line 1: meta-feature columns (meta_task_type, "), msg
    assert f"and the meta-feature file {meta} both give" in msg, msg
    assert "expected one of them; nothing was imported" in msg, msg
    assert _counts(registry) == (0, 0)
