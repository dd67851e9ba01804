"""The one test suite every token store runs (memory and Redis), like oauth2-proxy's session stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.config.model import RedisSettings
from proxy.metrics import Metrics
from proxy.store import StoreKey, TokenStore
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore, create_client
from tests.fixtures.process import free_port
from tests.fixtures.redis import RedisProcess, needs_redis

SECRET = "test-secret-0123456789abcdef"
ALICE = StoreKey("customer", "1\x001\x00alice")
BOB = StoreKey("customer", "1\x001\x00bob")


def redis_store(url: str, metrics: Metrics | None = None, **settings: object) -> RedisStore:
    # 1 s a call (the most allowed): a busy CI machine's round trip can pass the 0.25 s default.
    config = RedisSettings.model_validate({"url": url, "timeout_s": 1.0, **settings})
    return RedisStore(
        create_client(config),
        secret=SECRET,
        key_prefix=config.key_prefix,
        timeout_s=config.timeout_s,
        metrics=metrics or Metrics(),
    )


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TokenStore]:
    """Each store in turn; the Redis one on a server of its own."""
    if request.param == "memory":
        yield MemoryStore()
        return
    needs_redis()
    server = RedisProcess(free_port(), tmp_path / "redis").start()
    shared = redis_store(server.url)
    try:
        yield shared
    finally:
        await shared.aclose()
        server.kill()


async def test_absent_key_reads_none(store: TokenStore) -> None:
    """get of a key never put is None."""
    assert await store.get(ALICE) is None


async def test_put_value_reads_back(store: TokenStore) -> None:
    """get returns exactly the bytes put."""
    await store.put(ALICE, b"\x00token\xff", 30)
    assert await store.get(ALICE) == b"\x00token\xff"


async def test_put_replaces_value(store: TokenStore) -> None:
    """A second put under one key replaces the first value."""
    await store.put(ALICE, b"one", 30)
    await store.put(ALICE, b"two", 30)
    assert await store.get(ALICE) == b"two"


async def test_keys_are_separate(store: TokenStore) -> None:
    """Keys of different names, or of one name and different kinds, never see each other."""
    await store.put(ALICE, b"alice", 30)
    assert await store.get(BOB) is None
    assert await store.get(StoreKey("session", ALICE.name)) is None


async def test_entry_expires_after_ttl(store: TokenStore) -> None:
    """An entry is gone once its TTL has passed."""
    await store.put(ALICE, b"soon gone", 0.1)
    await asyncio.sleep(0.2)
    assert await store.get(ALICE) is None


async def test_delete_removes_entry(store: TokenStore) -> None:
    """delete drops the entry; deleting an absent key is no error."""
    await store.put(ALICE, b"x", 30)
    await store.delete(ALICE)
    await store.delete(BOB)
    assert await store.get(ALICE) is None


async def test_claim_is_exclusive(store: TokenStore) -> None:
    """The first claim of a key wins; a second one while it holds gets None."""
    lock = StoreKey("lock", ALICE.name)
    first = await store.claim(lock, 30)
    assert first is not None
    assert await store.claim(lock, 30) is None


async def test_release_frees_claim(store: TokenStore) -> None:
    """After release the key can be claimed again."""
    lock = StoreKey("lock", ALICE.name)
    first = await store.claim(lock, 30)
    assert first is not None
    await store.release(first)
    assert await store.claim(lock, 30) is not None


async def test_claim_expires_after_lease(store: TokenStore) -> None:
    """A claim never released (its holder died) frees the key when its lease runs out."""
    lock = StoreKey("lock", ALICE.name)
    assert await store.claim(lock, 0.1) is not None
    await asyncio.sleep(0.2)
    assert await store.claim(lock, 30) is not None


async def test_late_release_keeps_next_holders_claim(store: TokenStore) -> None:
    """A holder releasing after its lease ran out does not free the claim of the next holder."""
    lock = StoreKey("lock", ALICE.name)
    late = await store.claim(lock, 0.1)
    assert late is not None
    await asyncio.sleep(0.2)
    current = await store.claim(lock, 30)
    assert current is not None
    await store.release(late)
    assert await store.claim(lock, 30) is None


async def test_spend_takes_the_burst_then_says_how_long_to_wait(store: TokenStore) -> None:
    """A bucket of 5 refilled every 60 s: 5 spends at once are taken, the 6th waits about 60 s."""
    bucket = StoreKey("budget_client", "main\x00192.0.2.1")
    waits = [await store.spend(bucket, 60.0, 5) for _ in range(6)]
    assert waits[:5] == [0.0] * 5
    assert 59.0 < waits[5] <= 60.0


async def test_spend_refills_one_unit_per_interval(store: TokenStore) -> None:
    """Burst 2, one unit back every 0.2 s: spent out, then one more is taken after 0.2 s."""
    bucket = StoreKey("budget_client", "main\x00192.0.2.2")
    assert [await store.spend(bucket, 0.2, 2) for _ in range(3)][2] > 0
    await asyncio.sleep(0.25)
    assert await store.spend(bucket, 0.2, 2) == 0.0
    assert await store.spend(bucket, 0.2, 2) > 0


async def test_a_new_bucket_of_one_gives_its_unit_whatever_the_clock_reads() -> None:
    """A bucket's first unit is free at any clock value: at 4058.05932, (now + 60) - 60 - now is
    4.5e-13, not 0, and the memory store used to answer a wait of that much."""
    store = MemoryStore(clock=lambda: 4058.05932)
    assert await store.spend(StoreKey("budget_client", "a"), 60.0, 1) == 0.0
    assert await store.spend(StoreKey("budget_client", "a"), 60.0, 1) == pytest.approx(60.0)


async def test_spend_buckets_are_separate(store: TokenStore) -> None:
    """Spending one client's bucket leaves another's full."""
    await store.spend(StoreKey("budget_client", "a"), 60.0, 1)
    assert await store.spend(StoreKey("budget_client", "b"), 60.0, 1) == 0.0
