"""Customer tokens: make sure the StorefrontUser exists, get its token, cache it until it is due.

One :class:`TokenService` per sidecar. It keeps two things in memory:

- one LRU cache of customers, bounded by ``token_cache_size`` and keyed by (tenant, storefront,
  user id) so two storefronts never share a token. An entry says the StorefrontUser is known to
  exist (so a renewal or a login skips the Get that succeeded once) and holds its token while it
  may be handed out, and the least recently used customer goes first when the cache is full.
  One entry per customer, not one per token plus one per known user, keeps a cached customer
  near 1 KB;
- the work in flight: concurrent requests that need the same missing thing (a token, a user, a
  merge) share one :class:`asyncio.Task`, so 200 concurrent first requests cost one GetToken.

Tokens fresh enough for an editing session (contract): an editor keeps the token it opened
with, so no token is handed out with less than ``min(min_token_ttl_s, lifetime / 2)`` left
(never less than ``token_skew_s``). A cached token is renewed ahead of that, off the request
path: the first request that finds it past its renewal point starts one GetToken in the
background (one per customer, across replicas under the same claim as a first fetch) and is
served the current token; only a page that finds the token already below the minimum waits.
The token endpoint, asked at or after the renewal point (``renewIn`` on the page), waits for the
newer token instead, so ``renewIn`` keeps its promise. See :meth:`TokenService._read_token` for
the arithmetic.

Every public call is bounded by ``timeout_s``. A shared task is shielded from the request that
started it, so one client going away never cancels the work the others wait for; the task is
bounded by the same timeout, so nothing stays in flight forever.

With a shared store (``token_store.backend: redis``) the replicas act as one sidecar. The LRU
stays in front (an editor page of a customer this replica has seen costs no Redis round trip); a
miss asks the store before the API; the API work for one customer, and each merge, runs on one
replica at a time under a claim whose lease (``timeout_s`` plus a margin) outlives the work, which
is itself bounded by ``timeout_s``; the other replicas poll the store for its result within the
same bound. When the store is unavailable the service carries on as with the memory store.

Time for expiry comes from the injected ``clock`` (Unix seconds); timeouts are real time.
Nothing here ever logs a token, and user ids only at debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import jwt
from cachetools import LRUCache

from proxy.config.model import DEFAULT_MIN_TOKEN_TTL_S
from proxy.errors import (
    BadResponse,
    CircuitOpen,
    NotFound,
    OverBudget,
    StorefrontApiError,
    StorefrontUnavailable,
    StoreUnavailable,
    UserConflict,
)
from proxy.metrics import Metrics
from proxy.singleflight import SingleFlight
from proxy.store import Claim, StoreKey, TokenStore

log = logging.getLogger("proxy.tokens")

V = TypeVar("V")

# A claim on shared work outlives the work (bounded by timeout_s) by this much, so a second
# replica never starts the same work while the first still runs; no renewal is needed.
_LEASE_MARGIN_S = 1.0
# How often a replica waiting for another one's work looks for its result in the store.
_SHARED_POLL_S = 0.025
# A merge's outcome stays in the store this long, so a login's late requests on other replicas
# learn it instead of merging again (the guest cookie is cleared by then in a browser).
_MERGE_OUTCOME_TTL_S = 600.0


class Customer(NamedTuple):
    """Who a token is for: a StorefrontUser of one storefront (a tuple: made on every editor page)."""

    storefront_id: int
    user_id: str
    is_anonymous: bool


@dataclass(frozen=True, slots=True)
class CustomerToken:
    """A customer token and whom it is for; ``expires_at`` is the JWT's own ``exp`` (Unix s)."""

    storefront_id: int
    user_id: str
    is_anonymous: bool
    token: str
    expires_at: int
    # Clock time (Unix s) from which the token endpoint answers with a newer token.
    renew_at: float

    def __repr__(self) -> str:
        # The dataclass repr would print the token; a repr can end up in a log or a traceback.
        return (
            f"CustomerToken(storefront_id={self.storefront_id}, user_id={self.user_id!r}, "
            f"is_anonymous={self.is_anonymous}, token=<redacted>, expires_at={self.expires_at})"
        )


class UsersApi(Protocol):
    """The Storefront API calls this service needs (``proxy.storefront_api`` implements them)."""

    async def get_user(self, storefront_id: int, user_id: str) -> object:
        """StorefrontUsers_Get; raises :class:`~proxy.errors.NotFound` on 404."""
        ...

    async def create_user(self, storefront_id: int, user_id: str, *, is_anonymous: bool) -> object:
        """StorefrontUsers_Create; raises :class:`~proxy.errors.UserConflict` on 409."""
        ...

    async def get_token(self, storefront_id: int, user_id: str) -> str:
        """StorefrontUsers_GetToken: the bare token."""
        ...

    async def merge_anonymous(self, storefront_id: int, anonymous_user_id: str, regular_user_id: str) -> None:
        """StorefrontUsers_MergeAnonymous; raises NotFound or UserConflict on 404 / 409."""
        ...


class MergeOutcome(enum.Enum):
    """What became of a guest at login; the value is the ``outcome`` metric label."""

    MERGED = "merged"  # the guest's data moved to the customer: clear the guest cookie
    FINAL = "final"  # 404/409: one side is gone or it was merged already: clear the cookie
    NO_GUEST = "no_guest"  # the guest StorefrontUser never existed: clear, nothing to move
    FAILED = "failed"  # the API failed or was too slow: keep the cookie, a later request retries
    DEFERRED = "deferred"  # over budget: keep the cookie, a later request retries
    # Another guest cookie in a logged-in session that merged one already: cleared, no merge.
    SECOND_GUEST = "second_guest"

    @property
    def settled(self) -> bool:
        """Whether the guest cookie goes: the merge happened or never will (not failed, not deferred)."""
        return self not in (MergeOutcome.FAILED, MergeOutcome.DEFERRED)


class _Known(NamedTuple):
    """A customer known to exist, with their token while it may be handed out."""

    token: CustomerToken | None
    stale_at: float  # clock time from which the token is no longer handed out (token.renew_at: renewed)


# Charges the budget for API work on a customer not yet known; raises OverBudget past it.
Charge = Callable[[], Awaitable[None]]

# A customer that exists but has no usable token (found by a Get, or a token not worth caching).
_NO_TOKEN = _Known(None, -math.inf)

_UserKey = tuple[int | None, int, str]  # tenant, storefront, user id


class TokenService:
    """Hands out customer tokens and merges guests into customers at login."""

    def __init__(
        self,
        api: UsersApi,
        metrics: Metrics,
        *,
        tenant_id: int | None,
        cache_size: int,
        skew_s: float,
        lifetime_without_exp_s: float,
        timeout_s: float,
        min_ttl_s: float = DEFAULT_MIN_TOKEN_TTL_S,
        store: TokenStore | None = None,
        clock: Callable[[], float] = time.time,
        concurrent_new_customers: int | None = None,
        api_held_back: Callable[[], bool] | None = None,
    ) -> None:
        self._api = api
        # While the API's breaker holds calls back they cost Customer's Canvas nothing: no charge.
        self._api_held_back = api_held_back or (lambda: False)
        # API work for customers not yet known runs a few at a time, so a flood of new ones never
        # takes the API client's connections from known customers' renewals (which skip this).
        self._new_customers = (
            asyncio.Semaphore(concurrent_new_customers) if concurrent_new_customers is not None else None
        )
        # Only a store other replicas see adds anything to the LRU below.
        self._shared = store if store is not None and store.shared else None
        self._metrics = metrics
        self._tenant_id = tenant_id
        self._skew_s = skew_s
        self._lifetime_without_exp_s = lifetime_without_exp_s
        self._timeout_s = timeout_s
        self._min_ttl_s = min_ttl_s
        self._clock = clock
        self._known: LRUCache[_UserKey, _Known] = LRUCache(maxsize=cache_size)
        self._token_flights: SingleFlight[_UserKey, CustomerToken] = SingleFlight()
        # Renewals of a cached token, started by the request that found it due; tracked so that
        # a page that must wait joins the one in flight and aclose() stops them.
        self._renewals: SingleFlight[_UserKey, CustomerToken] = SingleFlight()
        self._lookup_flights: SingleFlight[_UserKey, bool] = SingleFlight()
        self._ensure_flights: SingleFlight[_UserKey, None] = SingleFlight()
        self._merge_flights: SingleFlight[_UserKey, MergeOutcome] = SingleFlight()

    # -- public -------------------------------------------------------------------------------

    def cached(self, customer: Customer) -> CustomerToken | None:
        """The cached token for ``customer`` while it may be handed out; no I/O, counts nothing."""
        key = self._user_key(customer.storefront_id, customer.user_id)
        entry = self._handable(key, customer.is_anonymous)
        return None if entry is None else entry.token

    def cached_hit(self, storefront_id: int, user_id: str, *, is_anonymous: bool) -> CustomerToken | None:
        """The cached token counted as a cache hit, or None (uncounted: call token_for).

        Every editor page of a returning customer asks this: it takes the customer's fields
        rather than a :class:`Customer` made for the purpose. A token past its renewal point is
        still returned, and its renewal started in the background.
        """
        key = self._user_key(storefront_id, user_id)
        entry = self._handable(key, is_anonymous)
        if entry is None:
            return None
        token = entry.token
        assert token is not None
        if token.renew_at <= self._clock():
            self._renew_in_background(key, Customer(storefront_id, user_id, is_anonymous))
        self._metrics.token_cache_hits.inc()
        return token

    async def token_for(
        self, customer: Customer, charge: Charge | None = None, *, newer_when_due: bool = False
    ) -> CustomerToken:
        """A token for ``customer``: from the cache, else made sure of the user and fetched.

        A cached token past its renewal point is returned while it may still be handed out, its
        renewal started in the background; with ``newer_when_due`` (the token endpoint, which
        promised a newer token from then on) the call waits for the renewal instead.

        Raises :class:`~proxy.errors.StorefrontUnavailable` when the work takes longer than
        ``timeout_s``, and any other :class:`~proxy.errors.StorefrontApiError` as the API gave it.
        ``charge`` is called before API work on a customer not yet known (never for a known
        one); its :class:`~proxy.errors.OverBudget` is raised here, and to the requests that
        joined the same work. Each call counts once: a hit when served from the cache, else a
        miss (also when it joins a fetch already in flight).
        """
        key = self._user_key(customer.storefront_id, customer.user_id)
        entry = self._handable(key, customer.is_anonymous)
        if entry is not None:
            token = entry.token
            assert token is not None
            if token.renew_at > self._clock():
                self._metrics.token_cache_hits.inc()
                return token
            if not newer_when_due:
                self._renew_in_background(key, customer)
                self._metrics.token_cache_hits.inc()
                return token
            self._metrics.token_cache_misses.inc()
            return await self._newer(key, customer, token)
        self._metrics.token_cache_misses.inc()
        # A page that must wait joins the renewal in flight rather than start a second GetToken.
        task = self._renewals.running(key) or self._token_flights.run(
            key, lambda: self._bounded("token", self._fetch_token(key, customer, charge, accept_due=True))
        )
        token = await self._wait(asyncio.shield(task), "token")
        if token.renew_at <= self._clock() and self._handable(key, customer.is_anonymous) is not None:
            # Another replica's token, due: it serves this request, and a newer one is fetched.
            if newer_when_due:
                return await self._newer(key, customer, token)
            self._renew_in_background(key, customer)
        return token

    async def user_exists(self, storefront_id: int, user_id: str) -> bool:
        """Whether the StorefrontUser exists: known ones without a call, else by a Get.

        Raises :class:`~proxy.errors.StorefrontUnavailable` when the API cannot say.
        """
        try:
            return await self._wait(self._exists(storefront_id, user_id), "get_user")
        except StorefrontUnavailable:
            raise
        except StorefrontApiError as exc:
            raise StorefrontUnavailable(exc.operation, exc.detail, exc.status) from exc

    async def merge_guest(
        self,
        storefront_id: int,
        guest_user_id: str,
        regular_user_id: str,
        *,
        storefront_name: str,
        charge: Charge | None = None,
    ) -> MergeOutcome:
        """Move a guest's data to the customer who just logged in; never raises an API error.

        Concurrent calls for one guest share one merge. ``storefront_name`` labels the metric,
        like every other metric of a storefront. ``charge`` is called before the merge's API
        work; over budget the outcome is DEFERRED.
        """
        key = (self._tenant_id, storefront_id, guest_user_id)
        task = self._merge_flights.run(
            key,
            lambda: self._merge_once(storefront_id, guest_user_id, regular_user_id, storefront_name, charge),
        )
        try:
            return await self._wait(asyncio.shield(task), "merge_anonymous")
        except StorefrontUnavailable:
            # The shared merge runs on, bounded by the same timeout, and counts its own outcome.
            return MergeOutcome.FAILED

    def count_merge(self, storefront_name: str, outcome: MergeOutcome) -> None:
        """Count a login's guest that was settled without a merge being attempted."""
        self._metrics.merges.labels(storefront=storefront_name, outcome=outcome.value).inc()

    async def aclose(self) -> None:
        """Cancel the API work still in flight (at shutdown), background renewals included."""
        for flights in (
            self._merge_flights,
            self._renewals,
            self._token_flights,
            self._ensure_flights,
            self._lookup_flights,
        ):
            await flights.aclose()

    # -- tokens -------------------------------------------------------------------------------

    def _handable(self, key: _UserKey, is_anonymous: bool) -> _Known | None:
        """The customer's entry while its token may be handed out (a read counts as a use)."""
        entry = self._known.get(key)
        if entry is None or entry.token is None or entry.stale_at <= self._clock():
            return None
        # One id is one StorefrontUser; a token fetched under the other guest flag would carry
        # the wrong isAnonymous, so it is fetched again (identity rules make this impossible).
        return entry if entry.token.is_anonymous == is_anonymous else None

    def _renew_in_background(self, key: _UserKey, customer: Customer) -> None:
        """Start the customer's renewal unless one runs; its outcome is counted, never raised."""
        if self._renewals.running(key) is not None:
            return
        task = self._renewals.run(
            key, lambda: self._bounded("token", self._fetch_token(key, customer, None, accept_due=False))
        )
        task.add_done_callback(self._renewal_done)

    def _renewal_done(self, task: asyncio.Task[CustomerToken]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._metrics.token_renewals.labels("renewed").inc()
            return
        self._metrics.token_renewals.labels("failed").inc()
        if isinstance(error, CircuitOpen):
            return  # the breaker logs the outage as it begins and ends, not once per page
        if isinstance(error, StorefrontApiError):
            # The current token serves on; the next request past the renewal point tries again.
            log.warning("background token renewal failed: %s", error, extra={"error": type(error).__name__})
        else:
            log.error("background token renewal failed unexpectedly", exc_info=error)

    async def _newer(self, key: _UserKey, customer: Customer, current: CustomerToken) -> CustomerToken:
        """The token that replaces ``current`` (due): the renewal in flight, else one started now.

        If the renewal fails, or is not in within half of ``timeout_s`` (the caller's whole token
        work has ``timeout_s``, so a slow API must not turn a good token into a 503), ``current``
        is handed out while it still may be, else the error is raised.
        """
        self._renew_in_background(key, customer)
        task = self._renewals.running(key)
        assert task is not None  # just started, or in flight
        try:
            async with asyncio.timeout(self._timeout_s / 2):
                return await asyncio.shield(task)
        except TimeoutError:
            pass
        except StorefrontApiError:
            if self._handable(key, customer.is_anonymous) is None:
                raise
            return current
        if self._handable(key, customer.is_anonymous) is not None:
            return current
        return await self._wait(asyncio.shield(task), "token")

    def _remember(self, key: _UserKey, entry: _Known) -> None:
        self._known[key] = entry
        self._metrics.token_cache_entries.set(len(self._known))

    async def _fetch_token(
        self, key: _UserKey, customer: Customer, charge: Charge | None, *, accept_due: bool
    ) -> CustomerToken:
        """The shared work behind a miss or a renewal: from the shared store, else from the API.

        ``accept_due``: a token another replica stored that is past its renewal point (but may
        still be handed out) will do: a page is served it while it is renewed. A renewal wants
        a token that is not due, so it takes only one another replica has renewed already.
        """
        if self._shared is None:
            return await self._fetch_token_from_api(key, customer, charge)
        return await self._once_across_replicas(
            StoreKey("lock", _store_name(key)),
            lambda: self._shared_token(key, customer, accept_due=accept_due),
            lambda: self._fetch_and_share_token(key, customer, charge),
            "token",
        )

    async def _shared_token(
        self, key: _UserKey, customer: Customer, *, accept_due: bool
    ) -> CustomerToken | None:
        """The customer's token as another replica stored it (kept in the LRU too), or None."""
        assert self._shared is not None
        raw = await self._shared.get(StoreKey("customer", _store_name(key)))
        if raw is None:
            return None
        entry = json.loads(raw)
        token = CustomerToken(
            storefront_id=customer.storefront_id,
            user_id=customer.user_id,
            is_anonymous=bool(entry["anonymous"]),
            token=entry["token"],
            expires_at=int(entry["expires_at"]),
            renew_at=float(entry["renew_at"]),
        )
        # An entry of an earlier version has no stale_at: it was stale from renew_at on.
        stale_at = float(entry.get("stale_at", token.renew_at))
        now = self._clock()
        if stale_at <= now or token.is_anonymous != customer.is_anonymous:
            return None
        if not accept_due and token.renew_at <= now:
            return None
        self._remember(key, _Known(token, stale_at))
        return token

    async def _fetch_and_share_token(
        self, key: _UserKey, customer: Customer, charge: Charge | None
    ) -> CustomerToken:
        """Fetch from the API and store the token for the other replicas while it may be handed out."""
        token = await self._fetch_token_from_api(key, customer, charge)
        entry = self._known.get(key)
        if self._shared is not None and entry is not None and entry.token is token:
            ttl_s = entry.stale_at - self._clock()
            value = {
                "token": token.token,
                "expires_at": token.expires_at,
                "anonymous": token.is_anonymous,
                "renew_at": token.renew_at,
                "stale_at": entry.stale_at,
            }
            with contextlib.suppress(StoreUnavailable):
                # Expires when the token may no longer be handed out, never after its exp.
                await self._shared.put(
                    StoreKey("customer", _store_name(key)), json.dumps(value).encode(), ttl_s
                )
        return token

    async def _fetch_token_from_api(
        self, key: _UserKey, customer: Customer, charge: Charge | None
    ) -> CustomerToken:
        """Ensure the user, get the token, cache it if worth it.

        A customer not yet known is charged first, and its work waits its turn among the new.
        """
        if key in self._known:
            raw = await self._api.get_token(customer.storefront_id, customer.user_id)
        else:
            if charge is not None and not self._api_held_back():
                await charge()
            async with self._new_customer_turn():
                await self._ensure(customer.storefront_id, customer.user_id, customer.is_anonymous)
                raw = await self._api.get_token(customer.storefront_id, customer.user_id)
        now = self._clock()
        token, stale_at = self._read_token(customer, raw, now)
        if stale_at > now:
            self._remember(key, _Known(token, stale_at))
        else:
            log.info(
                "customer token arrived with less life than a token is handed out with; not cached",
                extra={"skew_s": self._skew_s, "expires_in_s": round(token.expires_at - now, 3)},
            )
        return token

    def _read_token(self, customer: Customer, raw: str, now: float) -> tuple[CustomerToken, float]:
        """The token with its ``exp`` and renewal point, and the clock time from which it is stale.

        With ``L`` the token's lifetime (``exp - iat`` as issued; from now if it has no ``iat``):

        - it is handed out while it has at least ``floor = max(min(min_token_ttl_s, L/2),
          token_skew_s)`` left, i.e. until ``stale_at = exp - floor``;
        - its renewal is due ``margin = min(timeout_s, L/20)`` before that. A renewal's GetToken
          is bounded by ``timeout_s``, so with ``L >= 20 * timeout_s`` (100 s with the default
          timeout) the newer token is in before the current one goes stale and nobody who keeps
          browsing waits; with shorter lifetimes a slow renewal may make a page wait.
        - A customer who browses all along thus costs one GetToken every ``L - floor - margin``:
          with 1-hour tokens and the defaults (floor 1800 s, margin 5 s) every 1795 s, 2.006 per
          lifetime; with ``L/2 <= min_token_ttl_s`` in general ``L / (L/2 - margin)``, at most
          2.22 per lifetime (``margin = L/20``), and fewer as ``min_token_ttl_s`` drops below
          ``L/2``. (Exactly 2 would need the renewal to start at the very moment the token goes
          stale, when the current token can no longer be served.)
        - The renewal point is never earlier than halfway from now to ``stale_at``, so a token
          whose lifetime is too short for the margin is not renewed by every request.
        """
        claims: dict[str, Any] | None = None
        # Not ours to verify (the sidecar is not its audience): read the claims only.
        with contextlib.suppress(jwt.InvalidTokenError):
            claims = jwt.decode(
                raw,
                options={
                    "verify_signature": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        if claims is None:
            # Raised after the pyjwt error was dropped, so it carries none as its context (that
            # error could quote the token); compiled by mypyc, ``raise ... from None`` would.
            raise BadResponse("token", "the customer token is not a JWT")
        exp = _number_claim(claims, "exp")
        iat = _number_claim(claims, "iat")
        if exp is None:
            lifetime = self._lifetime_without_exp_s
            ends_at = now + lifetime
            expires_at = int(ends_at)
        else:
            expires_at = int(exp)
            ends_at = exp
            if iat is not None and iat <= exp:
                lifetime = exp - iat
                # If this clock lags the issuer's, exp is later than it looks; the lifetime the
                # issuer granted, counted from now, keeps a token from outliving its real exp.
                ends_at = min(ends_at, now + lifetime)
            else:
                lifetime = max(0.0, exp - now)
        floor = max(min(self._min_ttl_s, lifetime / 2), self._skew_s)
        stale_at = ends_at - floor
        margin = min(self._timeout_s, lifetime / 20)
        renew_at = max(stale_at - margin, now + (stale_at - now) / 2)
        # nbf is not used: a token that is "not yet valid" by this clock only shows that clocks
        # differ, and the issuer, not the sidecar, judges it.
        token = CustomerToken(
            storefront_id=customer.storefront_id,
            user_id=customer.user_id,
            is_anonymous=customer.is_anonymous,
            token=raw,
            expires_at=expires_at,
            renew_at=renew_at,
        )
        return token, stale_at

    # -- users --------------------------------------------------------------------------------

    def _user_key(self, storefront_id: int, user_id: str) -> _UserKey:
        return (self._tenant_id, storefront_id, user_id)

    async def _exists(self, storefront_id: int, user_id: str) -> bool:
        """Known users without a call; else one shared Get (NotFound means no)."""
        key = self._user_key(storefront_id, user_id)
        if key in self._known:
            return True
        task = self._lookup_flights.run(
            key, lambda: self._bounded("get_user", self._lookup(storefront_id, user_id, key))
        )
        return await asyncio.shield(task)

    async def _lookup(self, storefront_id: int, user_id: str, key: _UserKey) -> bool:
        if self._shared is not None:
            # A customer another replica holds a token for exists: no Get.
            with contextlib.suppress(StoreUnavailable):
                if await self._shared.get(StoreKey("customer", _store_name(key))) is not None:
                    if key not in self._known:
                        self._remember(key, _NO_TOKEN)
                    return True
        try:
            await self._api.get_user(storefront_id, user_id)
        except NotFound:
            return False
        if key not in self._known:
            self._remember(key, _NO_TOKEN)
        return True

    async def _ensure(self, storefront_id: int, user_id: str, is_anonymous: bool) -> None:
        """Make sure the StorefrontUser exists: Get, and Create on 404 (409 there is success)."""
        key = self._user_key(storefront_id, user_id)
        if key in self._known:
            return
        task = self._ensure_flights.run(
            key,
            lambda: self._bounded(
                "create_user", self._create_if_missing(storefront_id, user_id, is_anonymous, key)
            ),
        )
        await asyncio.shield(task)

    async def _create_if_missing(
        self, storefront_id: int, user_id: str, is_anonymous: bool, key: _UserKey
    ) -> None:
        if await self._exists(storefront_id, user_id):
            return
        try:
            await self._api.create_user(storefront_id, user_id, is_anonymous=is_anonymous)
        except UserConflict:
            # Another sidecar (or request) created it between our Get and Create.
            log.debug("user created concurrently", extra={"storefront_id": storefront_id})
        if key not in self._known:
            self._remember(key, _NO_TOKEN)

    def _forget(self, storefront_id: int, user_id: str) -> None:
        """Drop a guest that is merged away: it is no longer known to exist, its token is void."""
        if self._known.pop(self._user_key(storefront_id, user_id), None) is not None:
            self._metrics.token_cache_entries.set(len(self._known))

    # -- merges -------------------------------------------------------------------------------

    async def _merge_once(
        self,
        storefront_id: int,
        guest_user_id: str,
        regular_user_id: str,
        storefront_name: str,
        charge: Charge | None,
    ) -> MergeOutcome:
        """One merge per guest across replicas: run it here, or learn another replica's outcome."""
        if self._shared is None:
            return await self._merge(storefront_id, guest_user_id, regular_user_id, storefront_name, charge)
        name = _store_name(self._user_key(storefront_id, guest_user_id))
        try:
            return await self._once_across_replicas(
                StoreKey("merge", name),
                lambda: self._shared_merge_outcome(storefront_id, guest_user_id, name),
                lambda: self._merge_and_share(
                    storefront_id, guest_user_id, regular_user_id, storefront_name, name, charge
                ),
                "merge_anonymous",
            )
        except StorefrontUnavailable:
            return MergeOutcome.FAILED

    async def _shared_merge_outcome(
        self, storefront_id: int, guest_user_id: str, name: str
    ) -> MergeOutcome | None:
        """The outcome another replica stored for this guest's merge, or None."""
        assert self._shared is not None
        raw = await self._shared.get(StoreKey("merged", name))
        if raw is None:
            return None
        self._forget(storefront_id, guest_user_id)
        return MergeOutcome(raw.decode())

    async def _merge_and_share(
        self,
        storefront_id: int,
        guest_user_id: str,
        regular_user_id: str,
        storefront_name: str,
        name: str,
        charge: Charge | None,
    ) -> MergeOutcome:
        """Merge here; store a final outcome for the others (a failed one is left for a retry)."""
        outcome = await self._merge(storefront_id, guest_user_id, regular_user_id, storefront_name, charge)
        if self._shared is not None and outcome.settled:
            with contextlib.suppress(StoreUnavailable):
                await self._shared.put(StoreKey("merged", name), outcome.value.encode(), _MERGE_OUTCOME_TTL_S)
                # The guest is gone: its token is void on every replica.
                await self._shared.delete(
                    StoreKey("customer", _store_name(self._user_key(storefront_id, guest_user_id)))
                )
        return outcome

    async def _merge(
        self,
        storefront_id: int,
        guest_user_id: str,
        regular_user_id: str,
        storefront_name: str,
        charge: Charge | None,
    ) -> MergeOutcome:
        """The shared work of one merge; counts and logs its outcome once (the budget logs its own)."""
        error: StorefrontApiError | None = None
        try:
            if charge is not None and not self._api_held_back():
                await charge()
        except OverBudget:
            self._metrics.merges.labels(storefront=storefront_name, outcome=MergeOutcome.DEFERRED.value).inc()
            return MergeOutcome.DEFERRED
        try:
            async with asyncio.timeout(self._timeout_s), self._new_customer_turn():
                outcome = await self._attempt_merge(storefront_id, guest_user_id, regular_user_id)
        except TimeoutError:
            outcome = MergeOutcome.FAILED
            error = StorefrontUnavailable("merge_anonymous", "timed out")
        except (NotFound, UserConflict) as exc:
            outcome, error = MergeOutcome.FINAL, exc
        except StorefrontApiError as exc:
            outcome, error = MergeOutcome.FAILED, exc
        except Exception:
            # A merge is a side effect of a page request and must never fail the page; a bug
            # surfaces here, with its traceback, instead.
            log.exception("guest merge failed unexpectedly", extra={"storefront_id": storefront_id})
            outcome = MergeOutcome.FAILED
            error = StorefrontUnavailable("merge_anonymous", "unexpected error")
        if outcome in (MergeOutcome.MERGED, MergeOutcome.FINAL):
            self._forget(storefront_id, guest_user_id)
        self._metrics.merges.labels(storefront=storefront_name, outcome=outcome.value).inc()
        extra: dict[str, object] = {"storefront_id": storefront_id, "outcome": outcome.value}
        if error is None:
            log.info("guest merge: %s", outcome.value, extra=extra)
        elif outcome is MergeOutcome.FINAL:
            log.info("guest merge is final: %s", error, extra=extra)
        else:
            log.warning("guest merge failed; a later request retries: %s", error, extra=extra)
        return outcome

    async def _attempt_merge(
        self, storefront_id: int, guest_user_id: str, regular_user_id: str
    ) -> MergeOutcome:
        """Raises NotFound/UserConflict only from MergeAnonymous (final); others mean failed."""
        try:
            if not await self._exists(storefront_id, guest_user_id):
                return MergeOutcome.NO_GUEST
            # MergeAnonymous works only into a regular user that exists already.
            await self._ensure(storefront_id, regular_user_id, is_anonymous=False)
        except (NotFound, UserConflict) as exc:
            # Not MergeAnonymous' answer, so nothing final about it (e.g. an unknown storefront).
            raise StorefrontUnavailable(exc.operation, exc.detail, exc.status) from exc
        await self._api.merge_anonymous(storefront_id, guest_user_id, regular_user_id)
        return MergeOutcome.MERGED

    def _new_customer_turn(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Wait for a turn among the API work on customers not yet known (see __init__)."""
        if self._new_customers is None:
            return contextlib.nullcontext()
        return self._new_customers

    # -- across replicas ----------------------------------------------------------------------

    async def _once_across_replicas(
        self,
        lock: StoreKey,
        read: Callable[[], Awaitable[V | None]],
        work: Callable[[], Awaitable[V]],
        operation: str,
    ) -> V:
        """The result another replica stored (``read``), else ``work`` run here under ``lock``.

        While another replica holds the lock this one polls ``read`` (within ``timeout_s``) and
        tries the lock again, so a holder that fails or dies hands over by release or by expiry.
        An unavailable store means ``work`` runs here, as with the memory store.
        """
        assert self._shared is not None
        deadline = time.monotonic() + self._timeout_s
        waited = False
        try:
            while True:
                found = await read()
                if found is not None:
                    return found
                claim = await self._shared.claim(lock, self._timeout_s + _LEASE_MARGIN_S)
                if claim is not None:
                    break
                if not waited:
                    self._metrics.store_lock_waits.inc()
                    waited = True
                if time.monotonic() >= deadline:
                    raise StorefrontUnavailable(operation, "timed out waiting for another replica")
                await asyncio.sleep(_SHARED_POLL_S)
        except StoreUnavailable:
            return await work()
        try:
            # The previous holder may have stored its result between our read and our claim.
            with contextlib.suppress(StoreUnavailable):
                found = await read()
                if found is not None:
                    return found
            return await work()
        finally:
            await self._release(claim)

    async def _release(self, claim: Claim) -> None:
        assert self._shared is not None
        # Unreleased, the claim frees itself when its lease runs out.
        with contextlib.suppress(StoreUnavailable):
            await self._shared.release(claim)

    # -- time ---------------------------------------------------------------------------------

    async def _bounded(self, operation: str, work: Coroutine[Any, Any, V]) -> V:
        """Run shared work within ``timeout_s``, so it never stays in flight for good."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await work
        except TimeoutError:
            pass
        # Outside the except block: no TimeoutError context (mypyc's ``from None`` keeps it).
        raise StorefrontUnavailable(operation, "timed out")

    async def _wait(self, work: Awaitable[V], operation: str) -> V:
        """Wait for one caller's work within ``timeout_s``.

        Callers pass shared tasks through :func:`asyncio.shield`, so one caller timing out or
        going away never cancels the work the others wait for.
        """
        try:
            async with asyncio.timeout(self._timeout_s):
                return await work
        except TimeoutError:
            pass
        # Outside the except block: no TimeoutError context (mypyc's ``from None`` keeps it).
        raise StorefrontUnavailable(operation, "timed out")


def _store_name(key: _UserKey) -> str:
    """What a store key indexes for one customer (a shared store writes only an HMAC of it)."""
    tenant, storefront_id, user_id = key
    return f"{tenant}\0{storefront_id}\0{user_id}"


def _number_claim(claims: dict[str, Any], name: str) -> float | None:
    """A numeric claim, or None when absent; a claim of another type makes the token unusable."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadResponse("token", f"the customer token's {name} claim is not a number")
    return float(value)
