"""Shared deadlines, in process: a task still waiting when its time is up is cancelled, and
told so; one that left first never is; a cancellation from elsewhere is never mistaken for
the deadline's."""

from __future__ import annotations

import asyncio

import pytest

from guestbook.deadlines import Deadlines

pytestmark = pytest.mark.anyio

AFTER = 0.2
GRAIN = 0.05


async def _wait(deadlines: Deadlines, seconds: float) -> str:
    """Join, wait `seconds`, and say how it ended."""
    task = asyncio.current_task()
    assert task is not None
    due = deadlines.join(task)
    try:
        await asyncio.sleep(seconds)
        return "finished"
    except asyncio.CancelledError:
        if deadlines.passed(task):
            return "timed out"
        raise
    finally:
        due.discard(task)


async def test_a_task_still_waiting_is_cut_no_sooner_than_its_deadline() -> None:
    deadlines = Deadlines(AFTER, GRAIN)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(_wait(deadlines, 60))
    assert await task == "timed out"
    assert loop.time() - started >= AFTER
    # Told, and no longer cancelled: it may answer the timeout.
    assert task.cancelling() == 0


async def test_tasks_that_join_together_are_cut_together_and_early_leavers_never() -> None:
    deadlines = Deadlines(AFTER, GRAIN)
    slow = [asyncio.create_task(_wait(deadlines, 60)) for _ in range(3)]
    quick = asyncio.create_task(_wait(deadlines, AFTER / 4))
    assert await asyncio.gather(*slow) == ["timed out"] * 3
    assert await quick == "finished"
    # Its timer has fired: nothing is left waiting.
    await asyncio.sleep(AFTER + GRAIN)
    assert not quick.cancelled()


async def test_a_cancellation_from_elsewhere_is_not_the_deadlines() -> None:
    deadlines = Deadlines(AFTER, GRAIN)
    task = asyncio.create_task(_wait(deadlines, 60))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_task_cancelled_from_elsewhere_as_its_deadline_passes_stays_cancelled() -> None:
    deadlines = Deadlines(AFTER, GRAIN)
    outcome: list[str] = []

    async def waiting() -> None:
        task = asyncio.current_task()
        assert task is not None
        due = deadlines.join(task)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            # Both the deadline and the caller asked: the caller's cancellation stands.
            outcome.append("timed out" if deadlines.passed(task) else "cancelled")
            raise
        finally:
            due.discard(task)

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0)
    task.cancel()  # from elsewhere, delivered at the same await as the deadline's
    deadlines._expire(next(iter(deadlines._due)))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]
