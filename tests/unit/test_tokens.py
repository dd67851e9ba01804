"""proxy.tokens: cache, single flight, timeouts and merges, against an in-memory Storefront API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from proxy.errors import (
    BadResponse,
    CircuitOpen,
    NotFound,
    StorefrontApiError,
    StorefrontUnavailable,
    Unauthorized,
    UserConflict,
)
from proxy.metrics import Metrics
from proxy.tokens import Customer, CustomerToken, MergeOutcome, TokenService, UsersApi

SIGNING_KEY = "unit-test-signing-key-of-32-bytes!!"
START = 1_800_000_000.0
SKEW_S = 30.0
LIFETIME_S = 3600
NO_EXP_LIFETIME_S = 300.0
GUEST = Customer(1, "anon-guest", is_anonymous=True)
ALICE = Customer(1, "alice@example.com", is_anonymous=False)


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeUsersApi:
    """Users in a dict; records every call; issues real HS256 JWTs; can fail or hold calls."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.users: dict[tuple[int, str], bool] = {}  # (storefront, user) -> is anonymous
        self.calls: list[tuple[str, int, str]] = []
        self.merges: list[tuple[int, str, str]] = []
        self.failures: dict[str, Exception] = {}  # operation -> what it raises
        self.gate: asyncio.Event | None = None  # when set, every call waits for it to open
        self.lifetime_s: float | None = LIFETIME_S  # None: tokens without exp
        self.raw_tokens: list[str] = []  # issued instead of a JWT while any are left
        self.issued = 0

    def count(self, operation: str) -> int:
        return sum(1 for call in self.calls if call[0] == operation)

    async def _enter(self, operation: str, storefront_id: int, user_id: str) -> None:
        self.calls.append((operation, storefront_id, user_id))
        if self.gate is not None:
            await self.gate.wait()
        failure = self.failures.get(operation)
        if failure is not None:
            raise failure

    async def get_user(self, storefront_id: int, user_id: str) -> object:
        await self._enter("get_user", storefront_id, user_id)
        if (storefront_id, user_id) not in self.users:
            raise NotFound("get_user", "no such user", 404)
        return {"userId": user_id, "storefrontId": storefront_id}

    async def create_user(self, storefront_id: int, user_id: str, *, is_anonymous: bool) -> object:
        await self._enter("create_user", storefront_id, user_id)
        if (storefront_id, user_id) in self.users:
            raise UserConflict("create_user", "exists", 409)
        self.users[storefront_id, user_id] = is_anonymous
        return {"userId": user_id, "storefrontId": storefront_id, "isAnonymous": is_anonymous}

    async def get_token(self, storefront_id: int, user_id: str) -> str:
        await self._enter("get_token", storefront_id, user_id)
        if self.raw_tokens:
            return self.raw_tokens.pop(0)
        self.issued += 1
        now = int(self.clock())
        claims: dict[str, Any] = {"sub": user_id, "sf": storefront_id, "n": self.issued, "iat": now}
        if self.lifetime_s is not None:
            claims["exp"] = now + self.lifetime_s
        return jwt.encode(claims, SIGNING_KEY, algorithm="HS256")

    async def merge_anonymous(self, storefront_id: int, anonymous_user_id: str, regular_user_id: str) -> None:
        await self._enter("merge_anonymous", storefront_id, anonymous_user_id)
        self.merges.append((storefront_id, anonymous_user_id, regular_user_id))


def _conforms(api: FakeUsersApi) -> UsersApi:
    return api  # mypy checks the fake against the protocol here


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def api(clock: FakeClock) -> FakeUsersApi:
    return FakeUsersApi(clock)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def make_service(
    api: FakeUsersApi,
    metrics: Metrics,
    clock: FakeClock,
    *,
    tenant_id: int | None = 7,
    cache_size: int = 100,
    skew_s: float = SKEW_S,
    timeout_s: float = 5.0,
) -> TokenService:
    return TokenService(
        _conforms(api),
        metrics,
        tenant_id=tenant_id,
        cache_size=cache_size,
        skew_s=skew_s,
        lifetime_without_exp_s=NO_EXP_LIFETIME_S,
        timeout_s=timeout_s,
        clock=clock,
    )


@pytest.fixture
async def service(api: FakeUsersApi, metrics: Metrics, clock: FakeClock) -> AsyncIterator[TokenService]:
    tokens = make_service(api, metrics, clock)
    yield tokens
    await tokens.aclose()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def hits(metrics: Metrics) -> float:
    return sample(metrics, "cc_sidecar_token_cache_hits_total")


def misses(metrics: Metrics) -> float:
    return sample(metrics, "cc_sidecar_token_cache_misses_total")


def entries(metrics: Metrics) -> float:
    return sample(metrics, "cc_sidecar_token_cache_entries")


def merges(metrics: Metrics, outcome: str, storefront: str = "main") -> float:
    return sample(metrics, "cc_sidecar_merges_total", storefront=storefront, outcome=outcome)


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


# -- tokens ------------------------------------------------------------------------------------


async def test_concurrent_first_requests_share_one_fetch(
    service: TokenService, api: FakeUsersApi, metrics: Metrics
) -> None:
    """200 concurrent first requests for one new customer make one Get, one Create, one GetToken."""
    api.gate = asyncio.Event()
    waiters = [asyncio.create_task(service.token_for(GUEST)) for _ in range(200)]
    await settle()
    api.gate.set()
    results = await asyncio.gather(*waiters)

    assert Counter(call[0] for call in api.calls) == {
        "get_user": 1,
        "create_user": 1,
        "get_token": 1,
    }
    assert api.users == {(1, "anon-guest"): True}
    assert len({result.token for result in results}) == 1
    assert all(result == results[0] for result in results)
    assert (misses(metrics), hits(metrics), entries(metrics)) == (200, 0, 1)


async def test_token_carries_the_customer_and_its_own_exp(service: TokenService, clock: FakeClock) -> None:
    """The CustomerToken names the customer and carries the JWT's exp as expires_at."""
    token = await service.token_for(ALICE)

    claims = jwt.decode(
        token.token,
        SIGNING_KEY,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_iat": False},  # the fake clock is not the real one
    )
    assert token == CustomerToken(
        storefront_id=1,
        user_id="alice@example.com",
        is_anonymous=False,
        token=token.token,
        expires_at=int(START) + LIFETIME_S,
        renew_at=token.renew_at,
    )
    assert claims["exp"] == token.expires_at


# 1-hour tokens, min_token_ttl_s 1800, timeout 5 s: handed out while at least 1800 s are left,
# renewed from 1805 s left on (see TokenService._read_token).
STALE_AFTER_S = LIFETIME_S / 2
RENEW_AFTER_S = STALE_AFTER_S - 5.0


async def test_cached_token_is_served_without_calls_until_its_renewal_point(
    service: TokenService, api: FakeUsersApi, metrics: Metrics, clock: FakeClock
) -> None:
    """A token is served from the cache without a call until lifetime/2 + 5 s are left."""
    first = await service.token_for(ALICE)
    calls_after_first = len(api.calls)
    assert first.renew_at == START + RENEW_AFTER_S

    clock.now = START + RENEW_AFTER_S - 0.001
    assert await service.token_for(ALICE) is first
    await settle()
    assert len(api.calls) == calls_after_first
    assert (misses(metrics), hits(metrics)) == (1, 1)


async def test_the_renewal_point_serves_the_current_token_and_renews_once_in_the_background(
    service: TokenService, api: FakeUsersApi, metrics: Metrics, clock: FakeClock
) -> None:
    """Past the renewal point, concurrent pages get the current token; one GetToken runs behind them."""
    first = await service.token_for(ALICE)
    calls_after_first = len(api.calls)
    clock.now = START + RENEW_AFTER_S
    api.gate = asyncio.Event()

    served = await asyncio.gather(*(service.token_for(ALICE) for _ in range(20)))
    assert [service.cached_hit(1, ALICE.user_id, is_anonymous=False) for _ in range(5)] == [first] * 5
    assert all(token is first for token in served)
    api.gate.set()
    await settle()

    renewed = await service.token_for(ALICE)
    assert renewed.token != first.token
    # The user is known to exist: the renewal is one GetToken and nothing else.
    assert api.calls[calls_after_first:] == [("get_token", 1, "alice@example.com")]
    assert renewed.renew_at == clock.now + RENEW_AFTER_S
    assert sample(metrics, "cc_sidecar_token_renewals_total", outcome="renewed") == 1


async def test_the_token_endpoint_asked_at_renew_in_gets_a_newer_token(
    service: TokenService, api: FakeUsersApi, clock: FakeClock
) -> None:
    """newer_when_due at the renewal point waits for one GetToken and returns the new token."""
    first = await service.token_for(ALICE)
    clock.now = first.renew_at
    newer, page = await asyncio.gather(
        service.token_for(ALICE, newer_when_due=True), service.token_for(ALICE, newer_when_due=True)
    )
    assert newer.token != first.token
    assert page is newer
    assert api.count("get_token") == 2
    assert await service.token_for(ALICE, newer_when_due=True) is newer


async def test_a_page_below_the_minimum_waits_for_the_renewal_in_flight(
    service: TokenService, api: FakeUsersApi, clock: FakeClock
) -> None:
    """Once the token has less than the minimum left a page waits, joining the renewal (no 2nd call)."""
    first = await service.token_for(ALICE)
    clock.now = first.renew_at
    api.gate = asyncio.Event()
    assert await service.token_for(ALICE) is first  # starts the renewal
    clock.now = START + STALE_AFTER_S
    assert service.cached(ALICE) is None
    waiting = asyncio.create_task(service.token_for(ALICE))
    await settle()
    assert not waiting.done()
    api.gate.set()
    renewed = await waiting
    assert renewed.token != first.token
    assert api.count("get_token") == 2


async def test_a_failed_background_renewal_is_counted_and_the_current_token_serves_on(
    service: TokenService,
    api: FakeUsersApi,
    metrics: Metrics,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A renewal that fails raises nothing: metrics count it, the log names no token, the page is served."""
    first = await service.token_for(ALICE)
    clock.now = first.renew_at
    api.failures["get_token"] = StorefrontUnavailable("token", "down", 503)
    assert await service.token_for(ALICE) is first
    await settle()
    assert sample(metrics, "cc_sidecar_token_renewals_total", outcome="failed") == 1
    assert await service.token_for(ALICE) is first
    assert first.token not in caplog.text
    assert "background token renewal failed" in caplog.text


async def test_a_renewal_held_back_by_the_breaker_is_counted_but_not_logged(
    service: TokenService,
    api: FakeUsersApi,
    metrics: Metrics,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the circuit is open each page past the renewal point counts a failed renewal, logging nothing."""
    first = await service.token_for(ALICE)
    clock.now = first.renew_at
    api.failures["get_token"] = CircuitOpen("token", "circuit open")
    for _ in range(3):
        assert await service.token_for(ALICE) is first
        await settle()
    assert sample(metrics, "cc_sidecar_token_renewals_total", outcome="failed") == 3
    assert "renewal" not in caplog.text


async def test_aclose_cancels_a_background_renewal(
    api: FakeUsersApi, metrics: Metrics, clock: FakeClock
) -> None:
    """aclose() stops a renewal waiting on the API; nothing is counted as failed."""
    service = make_service(api, metrics, clock)
    first = await service.token_for(ALICE)
    clock.now = first.renew_at
    api.gate = asyncio.Event()
    service.cached_hit(1, ALICE.user_id, is_anonymous=False)
    await settle()
    assert api.count("get_token") == 2
    await service.aclose()
    assert sample(metrics, "cc_sidecar_token_renewals_total", outcome="failed") == 0


async def test_browsing_over_three_lifetimes_keeps_half_the_lifetime_and_two_calls_per_lifetime(
    service: TokenService, api: FakeUsersApi, clock: FakeClock
) -> None:
    """A customer browsing every 7 s for 3 hours: every token has >= 1800 s left; <= 2 GetToken per hour."""
    ends = START + 3 * LIFETIME_S
    while clock.now < ends:
        token = await service.token_for(ALICE)
        assert token.expires_at - clock.now >= LIFETIME_S / 2
        await settle()
        clock.advance(7)
    # The first token, then one every 1795 s: 2.006 per lifetime.
    assert api.count("get_token") == 1 + int(3 * LIFETIME_S // RENEW_AFTER_S)
    assert api.count("get_token") <= 2 * 3 + 1


async def test_a_smaller_min_token_ttl_renews_later(
    api: FakeUsersApi, metrics: Metrics, clock: FakeClock
) -> None:
    """With min_token_ttl_s 600 a 1-hour token is handed out until 600 s are left, renewed from 605 s."""
    service = TokenService(
        _conforms(api),
        metrics,
        tenant_id=7,
        cache_size=10,
        skew_s=SKEW_S,
        lifetime_without_exp_s=NO_EXP_LIFETIME_S,
        timeout_s=5.0,
        min_ttl_s=600,
        clock=clock,
    )
    first = await service.token_for(ALICE)
    assert first.renew_at == START + LIFETIME_S - 605
    clock.now = START + LIFETIME_S - 600 - 0.001
    assert service.cached(ALICE) is first
    clock.now += 0.001
    assert service.cached(ALICE) is None
    await service.aclose()


async def test_token_without_exp_lives_the_configured_lifetime(
    service: TokenService, api: FakeUsersApi, clock: FakeClock
) -> None:
    """A token without exp lives lifetime_without_exp_s from its arrival: handed out for half of it."""
    api.lifetime_s = None
    first = await service.token_for(ALICE)
    assert first.expires_at == int(START + NO_EXP_LIFETIME_S)

    clock.advance(NO_EXP_LIFETIME_S / 2 - 0.001)
    assert service.cached(ALICE) is first
    clock.advance(0.001)
    assert service.cached(ALICE) is None
    assert (await service.token_for(ALICE)).token != first.token
    assert api.count("get_token") == 2


async def test_token_inside_the_skew_is_served_but_not_cached(
    service: TokenService, api: FakeUsersApi, metrics: Metrics
) -> None:
    """A token arriving within skew_s of its exp serves its request and is not cached."""
    api.lifetime_s = SKEW_S - 1
    first = await service.token_for(ALICE)
    assert first.expires_at == int(START + SKEW_S - 1)
    assert service.cached(ALICE) is None

    second = await service.token_for(ALICE)
    assert second.token != first.token
    assert api.count("get_token") == 2
    # The customer stays known to exist (one entry), without a token.
    assert (misses(metrics), hits(metrics), entries(metrics)) == (2, 0, 1)


async def test_a_token_is_renewed_early_when_this_clock_lags_the_issuer(
    service: TokenService, api: FakeUsersApi, clock: FakeClock
) -> None:
    """With iat ahead of this clock, the issued lifetime counts from arrival, not up to exp."""
    api.clock = FakeClock(START + 600)  # the issuer's clock runs 10 minutes ahead
    first = await service.token_for(ALICE)
    assert first.expires_at == int(START) + 600 + LIFETIME_S

    clock.advance(STALE_AFTER_S - 0.001)
    assert service.cached(ALICE) is first
    clock.advance(0.001)
    assert service.cached(ALICE) is None
    assert await service.token_for(ALICE) is not first
    assert api.count("get_token") == 2


async def test_cache_drops_the_least_recently_used_when_full(
    api: FakeUsersApi, metrics: Metrics, clock: FakeClock
) -> None:
    """With cache_size 2, a third customer evicts the least recently used one."""
    service = make_service(api, metrics, clock, cache_size=2)
    a, b, c = (Customer(1, name, is_anonymous=False) for name in ("a", "b", "c"))
    token_a = await service.token_for(a)
    await service.token_for(b)
    assert await service.token_for(a) is token_a  # a is now more recently used than b
    await service.token_for(c)

    assert service.cached(a) is token_a
    assert service.cached(b) is None
    assert service.cached(c) is not None
    assert entries(metrics) == 2
    await service.token_for(b)
    assert [call[2] for call in api.calls if call[0] == "get_token"] == ["a", "b", "c", "b"]


async def test_storefronts_and_guest_flag_never_share_a_token(
    service: TokenService, api: FakeUsersApi
) -> None:
    """The same user id in two storefronts, or under the other guest flag, gets its own token."""
    customers = [
        Customer(1, "same-id", is_anonymous=False),
        Customer(2, "same-id", is_anonymous=False),
        Customer(1, "same-id", is_anonymous=True),
    ]
    tokens = [await service.token_for(customer) for customer in customers]

    assert len({token.token for token in tokens}) == 3
    assert [(t.storefront_id, t.is_anonymous) for t in tokens] == [
        (1, False),
        (2, False),
        (1, True),
    ]
    assert [call[1] for call in api.calls if call[0] == "get_token"] == [1, 2, 1]
    # One id is one StorefrontUser per storefront: the latest token replaced the earlier one.
    assert [service.cached(customer) for customer in customers] == [None, tokens[1], tokens[2]]


async def test_tenants_never_share_a_token(api: FakeUsersApi, metrics: Metrics, clock: FakeClock) -> None:
    """Services for two tenants each fetch their own token for the same storefront and user."""
    first = make_service(api, metrics, clock, tenant_id=1)
    second = make_service(api, metrics, clock, tenant_id=2)

    assert (await first.token_for(ALICE)).token != (await second.token_for(ALICE)).token
    assert second.cached(ALICE) is not first.cached(ALICE)
    assert api.count("get_token") == 2


async def test_failure_reaches_every_waiter_and_is_not_cached(
    service: TokenService, api: FakeUsersApi
) -> None:
    """A failed fetch fails all its waiters once; the next request tries again and succeeds."""
    api.users[1, "alice@example.com"] = False
    api.gate = asyncio.Event()
    failure = StorefrontUnavailable("get_token", "server error", 503)
    api.failures["get_token"] = failure
    waiters = [asyncio.create_task(service.token_for(ALICE)) for _ in range(3)]
    await settle()
    api.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)

    assert results == [failure, failure, failure]
    assert api.count("get_token") == 1
    del api.failures["get_token"]
    token = await service.token_for(ALICE)
    assert token.user_id == "alice@example.com"
    assert api.count("get_token") == 2


async def test_cancelling_one_waiter_leaves_the_fetch_to_the_others(
    service: TokenService, api: FakeUsersApi
) -> None:
    """A waiter that goes away does not cancel the shared fetch the others wait for."""
    api.gate = asyncio.Event()
    leaver = asyncio.create_task(service.token_for(GUEST))
    stayer = asyncio.create_task(service.token_for(GUEST))
    await settle()
    leaver.cancel()
    await settle()
    api.gate.set()

    token = await stayer
    assert leaver.cancelled()
    assert service.cached(GUEST) is token
    assert api.count("get_token") == 1


async def test_slow_api_raises_unavailable_within_the_timeout(
    api: FakeUsersApi, metrics: Metrics, clock: FakeClock
) -> None:
    """An API that never answers makes token_for raise StorefrontUnavailable after timeout_s."""
    service = make_service(api, metrics, clock, timeout_s=0.05)
    api.gate = asyncio.Event()  # never opened
    started = time.monotonic()
    with pytest.raises(StorefrontUnavailable) as caught:
        await service.token_for(GUEST)
    elapsed = time.monotonic() - started

    assert (caught.value.operation, caught.value.detail) == ("token", "timed out")
    assert 0.05 <= elapsed < 0.5
    await service.aclose()


async def test_shared_fetch_is_bounded_too(api: FakeUsersApi, metrics: Metrics, clock: FakeClock) -> None:
    """A hung fetch leaves the in-flight table after timeout_s, so later requests try afresh."""
    service = make_service(api, metrics, clock, timeout_s=0.05)
    api.gate = asyncio.Event()
    with pytest.raises(StorefrontUnavailable):
        await service.token_for(GUEST)
    await asyncio.sleep(0.05)
    api.gate = None

    assert (await service.token_for(GUEST)).user_id == "anon-guest"
    assert api.count("get_user") == 2
    await service.aclose()


async def test_conflict_on_create_counts_as_existing(service: TokenService, api: FakeUsersApi) -> None:
    """A 409 on Create (another sidecar won the race) is success: the token is fetched."""
    api.failures["create_user"] = UserConflict("create_user", "exists", 409)
    token = await service.token_for(ALICE)

    assert token.user_id == "alice@example.com"
    assert [call[0] for call in api.calls] == ["get_user", "create_user", "get_token"]
    assert await service.user_exists(1, "alice@example.com") is True
    assert len(api.calls) == 3


async def test_create_is_asked_with_the_guest_flag(service: TokenService, api: FakeUsersApi) -> None:
    """A guest is created anonymous and a logged-in customer regular."""
    await service.token_for(GUEST)
    await service.token_for(ALICE)

    assert api.users == {(1, "anon-guest"): True, (1, "alice@example.com"): False}


async def test_existing_user_is_not_created(service: TokenService, api: FakeUsersApi) -> None:
    """A user the Get finds is not created again."""
    api.users[1, "alice@example.com"] = False
    await service.token_for(ALICE)

    assert [call[0] for call in api.calls] == ["get_user", "get_token"]


async def test_api_errors_propagate_as_they_are(service: TokenService, api: FakeUsersApi) -> None:
    """A non-timeout API error reaches the caller unchanged."""
    refused = Unauthorized("get_user", "forbidden", 403)
    api.failures["get_user"] = refused
    with pytest.raises(Unauthorized) as caught:
        await service.token_for(ALICE)

    assert caught.value is refused


async def test_a_token_that_is_no_jwt_is_a_bad_response_and_never_logged(
    service: TokenService, api: FakeUsersApi, caplog: pytest.LogCaptureFixture
) -> None:
    """A token pyjwt cannot read raises BadResponse; neither it nor the log quotes the token."""
    caplog.set_level(logging.DEBUG, logger="proxy.tokens")
    api.raw_tokens = ["not-a-jwt-SECRET"]
    with pytest.raises(BadResponse) as caught:
        await service.token_for(ALICE)

    assert "SECRET" not in str(caught.value)
    # No pyjwt error rides along (a traceback would print it): compiled or not.
    assert (caught.value.__cause__, caught.value.__context__) == (None, None)
    assert "SECRET" not in caplog.text
    assert service.cached(ALICE) is None


@pytest.mark.parametrize("exp", ["tomorrow", True, float("inf")])
async def test_a_non_numeric_exp_is_a_bad_response(
    service: TokenService, api: FakeUsersApi, exp: object
) -> None:
    """A JWT whose exp is not a finite number cannot be cached by its exp: BadResponse."""
    api.raw_tokens = [jwt.encode({"exp": exp}, SIGNING_KEY, algorithm="HS256")]
    with pytest.raises(BadResponse, match="exp claim is not a number"):
        await service.token_for(ALICE)


async def test_token_repr_hides_the_token(service: TokenService) -> None:
    """repr(CustomerToken) never shows the token, so a stray log line cannot leak it."""
    token = await service.token_for(ALICE)

    assert token.token not in repr(token)
    assert "token=<redacted>" in repr(token)


async def test_cached_counts_nothing_and_calls_nothing(
    service: TokenService, api: FakeUsersApi, metrics: Metrics
) -> None:
    """cached() answers from memory only and leaves hits and misses alone."""
    assert service.cached(ALICE) is None
    token = await service.token_for(ALICE)
    calls = len(api.calls)

    assert service.cached(ALICE) is token
    assert len(api.calls) == calls
    assert (misses(metrics), hits(metrics)) == (1, 0)


async def test_cached_hit_counts_a_hit_only_when_cached(
    service: TokenService, api: FakeUsersApi, metrics: Metrics
) -> None:
    """cached_hit() returns the cached token as a counted hit, and None uncounted on a miss."""
    assert service.cached_hit(1, ALICE.user_id, is_anonymous=False) is None
    assert (misses(metrics), hits(metrics)) == (0, 0)
    token = await service.token_for(ALICE)
    calls = len(api.calls)

    assert service.cached_hit(1, ALICE.user_id, is_anonymous=False) is token
    assert len(api.calls) == calls
    assert (misses(metrics), hits(metrics)) == (1, 1)


async def test_cached_hit_is_none_for_the_other_guest_flag(
    service: TokenService, api: FakeUsersApi, metrics: Metrics
) -> None:
    """A token fetched for a regular user is no hit for the same id asked as a guest."""
    await service.token_for(ALICE)

    assert service.cached_hit(1, ALICE.user_id, is_anonymous=True) is None
    assert hits(metrics) == 0


# -- users -------------------------------------------------------------------------------------


async def test_user_exists_asks_once_then_remembers(service: TokenService, api: FakeUsersApi) -> None:
    """user_exists makes one Get for a user that exists and none afterwards."""
    api.users[1, "alice@example.com"] = False

    assert await service.user_exists(1, "alice@example.com") is True
    assert await service.user_exists(1, "alice@example.com") is True
    assert api.calls == [("get_user", 1, "alice@example.com")]


async def test_user_exists_is_false_on_not_found_and_asks_again(
    service: TokenService, api: FakeUsersApi
) -> None:
    """A user the Get does not find is reported missing and not remembered as missing."""
    assert await service.user_exists(1, "nobody") is False
    assert await service.user_exists(1, "nobody") is False
    assert api.count("get_user") == 2


@pytest.mark.parametrize(
    "failure",
    [
        StorefrontUnavailable("get_user", "server error", 503),
        Unauthorized("get_user", "forbidden", 403),
        BadResponse("get_user", "unexpected status", 400),
    ],
)
async def test_user_exists_raises_unavailable_when_the_api_fails(
    service: TokenService, api: FakeUsersApi, failure: StorefrontApiError
) -> None:
    """Any API failure of the Get makes user_exists raise StorefrontUnavailable."""
    api.failures["get_user"] = failure
    with pytest.raises(StorefrontUnavailable) as caught:
        await service.user_exists(1, "alice@example.com")

    assert caught.value.operation == "get_user"
    assert caught.value.status == failure.status


# -- merges ------------------------------------------------------------------------------------


async def test_merge_moves_the_guest_into_a_created_regular_user(
    service: TokenService, api: FakeUsersApi, metrics: Metrics
) -> None:
    """MERGED: the regular user is created first, then MergeAnonymous runs once."""
    await service.token_for(GUEST)
    api.calls.clear()

    outcome = await service.merge_guest(1, "anon-guest", "alice@example.com", storefront_name="main")

    assert outcome is MergeOutcome.MERGED
    assert api.calls == [
        ("get_user", 1, "alice@example.com"),
        ("create_user", 1, "alice@example.com"),
        ("merge_anonymous", 1, "anon-guest"),
    ]
    assert api.users[1, "alice@example.com"] is False
    assert api.merges == [(1, "anon-guest", "alice@example.com")]
    assert merges(metrics, "merged") == 1
    # The guest is merged away: its token is dropped and its existence is asked afresh.
    assert service.cached(GUEST) is None
    assert entries(metrics) == 1  # the regular user, known to exist now
    await service.user_exists(1, "anon-guest")
    assert api.calls[-1] == ("get_user", 1, "anon-guest")


async def test_merges_are_counted_by_storefront_name(
    service: TokenService, api: FakeUsersApi, metrics: Metrics
) -> None:
    """cc_sidecar_merges_total labels the storefront by its name, like every other metric, not by id."""
    api.users[1, "anon-guest"] = True
    await service.merge_guest(1, "anon-guest", "alice@example.com", storefront_name="shop-eu")
    assert merges(metrics, "merged", storefront="shop-eu") == 1
    assert (
        metrics.registry.get_sample_value("cc_sidecar_merges_total", {"storefront": "1", "outcome": "merged"})
        is None
    )


@pytest.mark.parametrize(
    "failure",
    [NotFound("merge_anonymous", "gone", 404), UserConflict("merge_anonymous", "merged", 409)],
    ids=["404", "409"],
)
async def test_merge_answered_404_or_409_is_final(
    service: TokenService, api: FakeUsersApi, metrics: Metrics, failure: StorefrontApiError
) -> None:
    """FINAL: MergeAnonymous answering 404 or 409 leaves nothing to retry."""
    api.users[1, "anon-guest"] = True
    api.failures["merge_anonymous"] = failure

    assert (
        await service.merge_guest(1, "anon-guest", "alice@example.com", storefront_name="main")
        is MergeOutcome.FINAL
    )
    assert api.count("merge_anonymous") == 1
    assert merges(metrics, "final") == 1


async def test_merge_of_a_guest_that_never_existed_is_no_guest(
    service: TokenService, api: FakeUsersApi, metrics: Metrics
) -> None:
    """NO_GUEST: a guest the Get does not find is not merged and nobody is created."""
    outcome = await service.merge_guest(1, "anon-never", "alice@example.com", storefront_name="main")

    assert outcome is MergeOutcome.NO_GUEST
    assert api.calls == [("get_user", 1, "anon-never")]
    assert merges(metrics, "no_guest") == 1


async def test_merge_survives_an_unexpected_error(
    service: TokenService, api: FakeUsersApi, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """FAILED: even an error outside the API error tree does not escape merge_guest."""
    api.users[1, "anon-guest"] = True
    api.failures["merge_anonymous"] = RuntimeError("bug")

    assert (
        await service.merge_guest(1, "anon-guest", "alice@example.com", storefront_name="main")
        is MergeOutcome.FAILED
    )
    assert merges(metrics, "failed") == 1
    assert "guest merge failed unexpectedly" in caplog.text


@pytest.mark.parametrize("operation", ["get_user", "create_user", "merge_anonymous"])
async def test_merge_fails_softly_when_the_api_is_down(
    service: TokenService, api: FakeUsersApi, metrics: Metrics, operation: str
) -> None:
    """FAILED: an API failure anywhere in the merge is an outcome, never an exception."""
    api.users[1, "anon-guest"] = True
    api.failures[operation] = StorefrontUnavailable(operation, "server error", 503)

    assert (
        await service.merge_guest(1, "anon-guest", "alice@example.com", storefront_name="main")
        is MergeOutcome.FAILED
    )
    assert merges(metrics, "failed") == 1


async def test_failed_merge_is_retried_by_the_next_call(
    service: TokenService, api: FakeUsersApi, metrics: Metrics
) -> None:
    """After FAILED, the next login request merges again and can succeed."""
    api.users[1, "anon-guest"] = True
    api.failures["merge_anonymous"] = StorefrontUnavailable("merge_anonymous", "down", 503)
    assert (
        await service.merge_guest(1, "anon-guest", "alice@example.com", storefront_name="main")
        is MergeOutcome.FAILED
    )
    del api.failures["merge_anonymous"]

    assert (
        await service.merge_guest(1, "anon-guest", "alice@example.com", storefront_name="main")
        is MergeOutcome.MERGED
    )
    assert api.count("merge_anonymous") == 2
    assert (merges(metrics, "failed"), merges(metrics, "merged")) == (1, 1)


async def test_merge_that_times_out_is_failed(api: FakeUsersApi, metrics: Metrics, clock: FakeClock) -> None:
    """FAILED: a merge slower than timeout_s returns FAILED within about timeout_s."""
    service = make_service(api, metrics, clock, timeout_s=0.05)
    api.users[1, "anon-guest"] = True
    api.gate = asyncio.Event()
    started = time.monotonic()

    assert (
        await service.merge_guest(1, "anon-guest", "alice@example.com", storefront_name="main")
        is MergeOutcome.FAILED
    )
    assert time.monotonic() - started < 0.5
    await service.aclose()


async def test_concurrent_logins_merge_once(
    service: TokenService, api: FakeUsersApi, metrics: Metrics
) -> None:
    """Ten concurrent login requests for one guest call MergeAnonymous once and all see MERGED."""
    api.users[1, "anon-guest"] = True
    api.gate = asyncio.Event()
    waiters = [
        asyncio.create_task(service.merge_guest(1, "anon-guest", "alice@example.com", storefront_name="main"))
        for _ in range(10)
    ]
    await settle()
    api.gate.set()

    assert await asyncio.gather(*waiters) == [MergeOutcome.MERGED] * 10
    assert Counter(call[0] for call in api.calls) == {
        "get_user": 2,  # the guest and the regular user, once each
        "create_user": 1,
        "merge_anonymous": 1,
    }
    assert merges(metrics, "merged") == 1


async def test_token_and_merge_for_one_customer_share_the_user_check(
    service: TokenService, api: FakeUsersApi
) -> None:
    """A token request and a merge arriving together for one customer make one Get and Create."""
    api.users[1, "anon-guest"] = True
    api.gate = asyncio.Event()
    merge = asyncio.create_task(
        service.merge_guest(1, "anon-guest", "alice@example.com", storefront_name="main")
    )
    token = asyncio.create_task(service.token_for(ALICE))
    await settle()
    api.gate.set()

    assert await merge is MergeOutcome.MERGED
    assert (await token).user_id == "alice@example.com"
    assert api.calls.count(("get_user", 1, "alice@example.com")) == 1
    assert api.count("create_user") == 1
