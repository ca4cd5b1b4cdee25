"""Which rows an epoch visits: a plain permutation, or recent (harvested) rows at a share,
each group cycled through before any row repeats; the study option that turns it on."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from sqlalchemy import select

from pomlia_hpc.automl.sampling import RecentRows, epoch_order, recent_rows
from pomlia_hpc.automl.study import StudyOptions, create_study
from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_task


def test_without_recent_rows_an_epoch_is_a_permutation() -> None:
    order = epoch_order(50, None, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(50))
    assert recent_rows(50, 0, 0.5) is None and recent_rows(50, 10, None) is None


def test_recent_rows_get_their_share_and_repeat_evenly() -> None:
    recent = recent_rows(100, 10, 0.5)  # rows 90..99 are recent
    assert recent == RecentRows(90, 100, 0.5)
    order = epoch_order(100, recent, torch.Generator().manual_seed(1)).tolist()
    counts = Counter(order)
    assert len(order) == 100
    assert sum(n for row, n in counts.items() if row >= 90) == 50
    assert all(counts[row] == 5 for row in range(90, 100))  # cycled: 5 full passes each
    assert all(counts[row] <= 1 for row in range(90))  # old rows: 50 distinct of 90
    again = epoch_order(100, recent, torch.Generator().manual_seed(1)).tolist()
    assert again == order  # the generator decides everything


def test_recent_rows_in_the_middle_extra_images_after_them() -> None:
    order = epoch_order(30, RecentRows(10, 20, 0.25), torch.Generator().manual_seed(2)).tolist()
    assert sum(1 for r in order if 10 <= r < 20) == round(0.25 * 30)
    assert all(0 <= r < 30 for r in order)


@pytest.mark.parametrize(("count", "share"), [(11, 0.5), (5, 1.0), (5, 0.0), (-1, 0.5)])
def test_bad_recent_rows_are_one_clear_message(count: int, share: float) -> None:
    with pytest.raises(InputError, match="recent rows"):
        recent_rows(10, count, share)


def test_the_study_option_is_checked_and_needs_a_harvested_version(
    workspace: Workspace, reg: Registry
) -> None:
    with pytest.raises(InputError, match=r"--recent-share 1\.5: expected a fraction"):
        StudyOptions.checked(recent_share=1.5)
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    with pytest.raises(InputError, match="not a harvested dataset version"):
        create_study(reg, workspace, "blood", name="s", recent_share=0.5)
    assert create_study(reg, workspace, "blood", name="t").recent_share is None


def _as_harvest(reg: Registry, task: str, new_train: int) -> None:
    """Mark ``task``'s data set version as a harvest with ``new_train`` new training rows."""
    from pomlia_hpc.registry import DatasetVersion, Task

    with reg.session() as s:
        t = s.scalar(select(Task).where(Task.name == task))
        assert t is not None
        version = s.get(DatasetVersion, t.dataset_version_id)
        assert version is not None
        meta = dict(version.meta or {})
        meta["source"] = {"harvest": {"new_per_split": {"train": new_train, "val": 2}}}
        version.meta = meta


def test_a_harvest_without_new_training_rows_is_refused_not_silently_ignored(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    _as_harvest(reg, "blood", 0)
    with pytest.raises(InputError, match="without new training images"):
        create_study(reg, workspace, "blood", name="s", recent_share=0.5)
    _as_harvest(reg, "blood", 4)
    spec = create_study(reg, workspace, "blood", name="t", recent_share=0.5)
    assert spec.recent_share == 0.5 and spec.recent_rows == 4
