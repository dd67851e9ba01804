"""proxy.tokens with a shared store: two services on one Redis act as one (issue 13)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import generate_latest

from proxy.config.model import RedisSettings
from proxy.errors import StorefrontUnavailable
from proxy.metrics import Metrics
from proxy.store import StoreKey
from proxy.store.redis import RedisStore, create_client
from proxy.tokens import Customer, MergeOutcome, TokenService
from tests.fixtures.redis import RedisProcess
from tests.unit.test_tokens import NO_EXP_LIFETIME_S, SKEW_S, FakeClock, FakeUsersApi

ALICE = Customer(1, "alice@example.com", is_anonymous=False)
GUEST = Customer(1, "anon-guest", is_anonymous=True)
# Long enough that a loaded CI machine's first Redis round trips never hit it; the one test
# about the timeout itself asks for SHORT_TIMEOUT_S.
TIMEOUT_S = 5.0
SHORT_TIMEOUT_S = 0.5


@pytest.fixture
async def replica(
    redis_server: RedisProcess, api: FakeUsersApi, clock: FakeClock
) -> AsyncIterator[Callable[..., TokenService]]:
    """Makes token services, each with its own client of one Redis (as separate replicas would)."""
    made: list[tuple[TokenService, RedisStore]] = []

    def make(metrics: Metrics | None = None, timeout_s: float = TIMEOUT_S) -> TokenService:
        metrics = metrics or Metrics()
        settings = RedisSettings.model_validate({"url": redis_server.url, "timeout_s": 1.0})
        store = RedisStore(
            create_client(settings),
            secret="test-secret-0123456789abcdef",
            key_prefix=settings.key_prefix,
            timeout_s=settings.timeout_s,
            metrics=metrics,
        )
        service = TokenService(
            api,
            metrics,
            tenant_id=7,
            cache_size=100,
            skew_s=SKEW_S,
            lifetime_without_exp_s=NO_EXP_LIFETIME_S,
            timeout_s=timeout_s,
            store=store,
            clock=clock,
        )
        made.append((service, store))
        return service

    yield make
    for service, store in made:
        await service.aclose()
        await store.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
def api(clock: FakeClock) -> FakeUsersApi:
    return FakeUsersApi(clock)


async def test_token_fetched_by_one_replica_is_served_by_another(
    replica: Callable[..., TokenService], api: FakeUsersApi
) -> None:
    """The second replica answers from Redis: the same token, no API call of its own."""
    first, second = replica(), replica()
    token = await first.token_for(ALICE)
    calls = len(api.calls)
    assert (await second.token_for(ALICE)).token == token.token
    assert len(api.calls) == calls


async def test_concurrent_replicas_share_one_get_token(
    replica: Callable[..., TokenService], api: FakeUsersApi
) -> None:
    """Two replicas asking for a new customer at once: one Get, one Create, one GetToken."""
    first, second = replica(), replica()
    api.gate = asyncio.Event()
    one = asyncio.create_task(first.token_for(ALICE))
    await asyncio.sleep(0.05)  # the first replica holds the lock, its API call held at the gate
    other = asyncio.create_task(second.token_for(ALICE))
    await asyncio.sleep(0.05)
    api.gate.set()
    tokens = await asyncio.gather(one, other)
    assert tokens[0].token == tokens[1].token
    assert (api.count("get_user"), api.count("create_user"), api.count("get_token")) == (1, 1, 1)


async def test_stale_shared_token_is_fetched_again(
    replica: Callable[..., TokenService], api: FakeUsersApi, clock: FakeClock
) -> None:
    """A token past its renewal time by this replica's clock is not taken from Redis."""
    first, second = replica(), replica()
    await first.token_for(ALICE)
    clock.advance(3600)
    await second.token_for(ALICE)
    assert api.count("get_token") == 2


async def test_lock_of_a_dead_replica_frees_itself_by_its_lease(
    replica: Callable[..., TokenService], redis_server: RedisProcess, api: FakeUsersApi
) -> None:
    """A lock whose holder died holds the customer back until its lease ends, then one GetToken."""
    service = replica(timeout_s=SHORT_TIMEOUT_S)
    settings = RedisSettings.model_validate({"url": redis_server.url, "timeout_s": 1.0})
    dead = RedisStore(
        create_client(settings),
        secret="test-secret-0123456789abcdef",
        key_prefix=settings.key_prefix,
        timeout_s=settings.timeout_s,
        metrics=Metrics(),
    )
    lease_s = SHORT_TIMEOUT_S + 1
    assert await dead.claim(StoreKey("lock", "7\x001\x00alice@example.com"), lease_s) is not None
    await dead.aclose()
    started = time.monotonic()
    with pytest.raises(StorefrontUnavailable):
        await service.token_for(ALICE)
    # It gave up at its own timeout, well before the lease ended.
    assert SHORT_TIMEOUT_S - 0.05 < time.monotonic() - started < lease_s - 0.2
    assert api.count("get_token") == 0
    await asyncio.sleep(1.1)
    await service.token_for(ALICE)
    assert api.count("get_token") == 1


async def test_login_seen_by_two_replicas_merges_once(
    replica: Callable[..., TokenService], api: FakeUsersApi
) -> None:
    """Both replicas merge the same guest at once: one MergeAnonymous, both learn it merged."""
    first, second = replica(), replica()
    await first.token_for(GUEST)
    outcomes = await asyncio.gather(
        first.merge_guest(1, GUEST.user_id, ALICE.user_id, storefront_name="main"),
        second.merge_guest(1, GUEST.user_id, ALICE.user_id, storefront_name="main"),
    )
    assert outcomes == [MergeOutcome.MERGED, MergeOutcome.MERGED]
    assert api.merges == [(1, GUEST.user_id, ALICE.user_id)]


async def test_dead_redis_leaves_the_replica_working_alone(
    replica: Callable[..., TokenService], redis_server: RedisProcess, api: FakeUsersApi
) -> None:
    """Redis gone: tokens still come (from the API, then the local cache), the store shows unavailable."""
    metrics = Metrics()
    service = replica(metrics)
    redis_server.kill()
    token = await service.token_for(ALICE)
    assert (await service.token_for(ALICE)).token == token.token
    assert api.count("get_token") == 1
    assert "cc_sidecar_store_available 0.0" in generate_latest(metrics.registry).decode()
