"""The serving process's own settings, in process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from guestbook.server import GC_YOUNG, settle_gc


@pytest.fixture
def gc_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("gc_restored")
def test_settling_the_collector_freezes_start_up_and_collects_young_objects_less_often() -> None:
    gc.unfreeze()
    _, middle, old = gc.get_threshold()

    settle_gc()

    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GC_YOUNG, middle, old)
    assert GC_YOUNG > 700
