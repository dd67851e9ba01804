"""Single-flight: one task per key while it runs."""

from __future__ import annotations

import asyncio

import pytest

from proxy.singleflight import SingleFlight


async def test_concurrent_callers_share_one_task() -> None:
    """Callers arriving while a key's task runs get that task; the work runs once."""
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    tasks = [flights.run("k", work) for _ in range(10)]
    assert len({id(task) for task in tasks}) == 1
    gate.set()
    assert await asyncio.gather(*tasks) == [42] * 10
    assert runs == 1
    assert len(flights) == 0


async def test_a_finished_failure_is_not_handed_to_later_callers() -> None:
    """After a task failed, the next caller starts fresh work instead of getting the old error."""
    flights: SingleFlight[str, int] = SingleFlight()
    answers = iter([ValueError("first"), 7])

    async def work() -> int:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(ValueError, match="first"):
        await flights.run("k", work)
    assert await flights.run("k", work) == 7


async def test_aclose_cancels_what_is_in_flight() -> None:
    """aclose() cancels running tasks and waits for them."""
    flights: SingleFlight[str, None] = SingleFlight()
    task = flights.run("k", lambda: asyncio.sleep(60))
    await flights.aclose()
    assert task.cancelled()
