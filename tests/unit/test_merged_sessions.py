"""proxy.merged_sessions.MergedSessions: a logged-in session merges at most one guest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.config.model import RedisSettings
from proxy.merged_sessions import MergedSessions, session_of
from proxy.metrics import Metrics
from proxy.store import StoreKey
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from tests.fixtures.redis import RedisProcess

SESSION = session_of(1, "0123456789abcdef0123456789abcdef", "jane@example.com")


@pytest.fixture
async def replicas(redis_server: RedisProcess) -> AsyncIterator[tuple[MergedSessions, MergedSessions]]:
    """Two replicas' memories of one Redis (a generous timeout: the machine may be busy)."""
    settings = RedisSettings.model_validate({"url": redis_server.url, "timeout_s": 1.0})
    stores = [
        RedisStore.from_settings(settings, secret="test-secret-0123456789abcdef", metrics=Metrics())
        for _ in range(2)
    ]
    for store in stores:  # connected before the test, so no first connect counts as an outage
        await store.get(StoreKey("merge_session", "warm-up"))
    yield MergedSessions(stores[0]), MergedSessions(stores[1])
    for store in stores:
        await store.aclose()


async def test_the_first_guest_and_only_it_is_admitted() -> None:
    """Memory store: guest A is admitted (twice, as its own requests repeat), guest B then is not."""
    sessions = MergedSessions(MemoryStore())
    assert [
        await sessions.admit(SESSION, "anon-a"),
        await sessions.admit(SESSION, "anon-a"),
        await sessions.admit(SESSION, "anon-b"),
    ] == [True, True, False]


async def test_a_failed_merge_frees_the_session() -> None:
    """After failed(), the session admits a guest again."""
    sessions = MergedSessions(MemoryStore())
    await sessions.admit(SESSION, "anon-a")
    await sessions.failed(SESSION)
    assert await sessions.admit(SESSION, "anon-b") is True


async def test_sessions_are_apart() -> None:
    """Another session key, or another customer without a session cookie, has its own merge."""
    sessions = MergedSessions(MemoryStore())
    await sessions.admit(SESSION, "anon-a")
    other = session_of(1, "fedcba9876543210fedcba9876543210", "jane@example.com")
    assert await sessions.admit(other, "anon-b") is True
    assert await sessions.admit(session_of(1, None, "max@example.com"), "anon-c") is True
    assert await sessions.admit(session_of(1, None, "max@example.com"), "anon-d") is False


async def test_two_guests_at_once_on_two_replicas_admit_one(
    replicas: tuple[MergedSessions, MergedSessions],
) -> None:
    """20 guests arriving at once, spread over two replicas on one Redis: exactly one admitted."""
    guests = [f"anon-{n}" for n in range(20)]
    admitted = await asyncio.gather(
        *(replicas[n % 2].admit(SESSION, guest) for n, guest in enumerate(guests))
    )
    assert admitted.count(True) == 1
    winner = guests[admitted.index(True)]
    assert await replicas[1].admit(SESSION, winner) is True


async def test_redis_gone_falls_back_to_this_replicas_memory(
    replicas: tuple[MergedSessions, MergedSessions], redis_server: RedisProcess
) -> None:
    """Redis killed: the replica still admits one guest per session from its own memory."""
    redis_server.kill()
    assert [await replicas[0].admit(SESSION, "anon-a"), await replicas[0].admit(SESSION, "anon-b")] == [
        True,
        False,
    ]
