"""proxy.identity.ResponseHeaderMemory: what the shop's response header said, kept in the token store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.config.model import RedisSettings
from proxy.identity import ResponseHeaderMemory
from proxy.metrics import Metrics
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from tests.fixtures.redis import RedisProcess

SESSION = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def stores(redis_server: RedisProcess) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two replicas' clients of one Redis."""
    settings = RedisSettings.model_validate({"url": redis_server.url})
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
