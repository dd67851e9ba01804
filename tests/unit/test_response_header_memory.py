"""proxy.identity.ResponseHeaderMemory: what the shop's response header said, kept in the token store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.config.model import RedisSettings
from proxy.identity import ResponseHeaderMemory
from proxy.metrics import Metrics
from proxy.store.memory import MemoryStore
from proxy.store.redis import RETRY_AFTER_S, RedisStore
from tests.fixtures.emulator import ManualClock
from tests.fixtures.redis import RedisProcess
from tests.unit.test_store_redis import make_store

SESSION = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def stores(redis_server: RedisProcess) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two replicas' clients of one Redis."""
    settings = RedisSettings.model_validate({"url": redis_server.url, "timeout_s": 1.0})
    made = tuple(
        RedisStore.from_settings(settings, secret="test-secret-0123456789abcdef", metrics=Metrics())
        for _ in range(2)
    )
    yield made[0], made[1]
    for store in made:
        await store.aclose()


async def test_memory_store_remembers_and_forgets() -> None:
    """With the memory store: recall gives the customer remembered, and None once forgotten."""
    memory = ResponseHeaderMemory(MemoryStore())
    await memory.remember(SESSION, "max@example.com")
    assert await memory.recall(SESSION) == "max@example.com"
    await memory.forget(SESSION)
    assert await memory.recall(SESSION) is None


async def test_logout_on_one_replica_is_seen_by_another(stores: tuple[RedisStore, RedisStore]) -> None:
    """Replica B remembered the customer; replica A saw the logout: B recalls nobody."""
    here, there = ResponseHeaderMemory(stores[0]), ResponseHeaderMemory(stores[1])
    await here.remember(SESSION, "max@example.com")
    assert await there.recall(SESSION) == "max@example.com"
    await there.forget(SESSION)
    assert await here.recall(SESSION) is None


async def test_unavailable_store_falls_back_to_what_this_replica_saw(
    stores: tuple[RedisStore, RedisStore], redis_server: RedisProcess
) -> None:
    """Redis gone: recall answers from this replica's own view, as the memory store would."""
    memory = ResponseHeaderMemory(stores[0])
    await memory.remember(SESSION, "max@example.com")
    redis_server.kill()
    assert await memory.recall(SESSION) == "max@example.com"
    await memory.forget(SESSION)
    assert await memory.recall(SESSION) is None


async def test_a_logout_the_store_missed_is_sent_when_it_answers_again(redis_server: RedisProcess) -> None:
    """Redis frozen while a replica sees the logout: nobody's meanwhile, and deleted from Redis once it is back.

    Without the replay the customer's entry would outlive the outage and name the customer to
    every replica for a day.
    """
    clock = ManualClock()
    here = make_store(redis_server, clock=clock)
    there = make_store(redis_server)
    try:
        seen_here, seen_there = ResponseHeaderMemory(here), ResponseHeaderMemory(there)
        await seen_here.remember(SESSION, "max@example.com")
        redis_server.freeze()
        await seen_here.forget(SESSION)  # times out: the store misses it
        assert await seen_here.recall(SESSION) is None
        redis_server.thaw()
        clock.advance(RETRY_AFTER_S)
        assert await seen_here.recall("another-session-0000000000000000") is None  # the store answers
        assert await seen_there.recall(SESSION) is None
    finally:
        redis_server.thaw()
        await here.aclose()
        await there.aclose()
