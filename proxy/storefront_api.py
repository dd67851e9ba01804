"""The Customer's Canvas Storefront API client: OAuth2 access token, the calls, and resilience.

One :class:`StorefrontApiClient` per sidecar, on one pooled :class:`aiohttp.ClientSession`
(:func:`create_api_session`). Every public call goes through the same path:

1. the :class:`CircuitBreaker` lets it through, or raises :class:`~proxy.errors.CircuitOpen` at
   once, without touching the network;
2. an access token is taken from the cache, or fetched once for all concurrent callers (a shared
   task, shielded, so one caller going away never cancels the fetch the others wait for);
3. the request is sent; a 401 drops the access token and the call is sent once more with a new
   one; a transient failure is retried once (at most 2 attempts) only where that is safe: GET
   calls on 5xx, timeouts and broken connections, and any call whose connection could not be made
   (nothing was sent);
4. the answer is mapped onto the exception tree of :mod:`proxy.errors` and parsed leniently;
5. the outcome is counted in ``cc_sidecar_api_calls_total{operation,outcome}`` and reported to
   the breaker (NotFound, UserConflict and BadResponse are the service answering, so they count as
   successes there; Unauthorized counts as a failure: wrong credentials won't heal by retrying,
   and an open circuit spares every page a token-endpoint round trip until they are fixed).

Each public call is bounded by ``timeout_s`` as a whole (access token, attempts and backoff); a
timed-out attempt is retried only while time is left (a connect timeout takes half at most).
Time for the access token's expiry and for the breaker comes from the injected ``clock``;
timeouts are real time. Nothing here logs or raises with a secret, access token or customer token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from proxy.config.model import CustomersCanvasSettings
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

log = logging.getLogger("proxy.storefront_api")

T = TypeVar("T")

API_PREFIX: Final = "/api/storefront/v1"

# Operation names, as the vendor's API clients name them; the ``operation`` metric label.
OP_TOKEN: Final = "token"  # noqa: S105 - an operation name, not a secret
OP_STOREFRONTS_GET_ALL: Final = "Storefronts_GetAll"
OP_USERS_GET: Final = "StorefrontUsers_Get"
OP_USERS_CREATE: Final = "StorefrontUsers_Create"
OP_USERS_GET_TOKEN: Final = "StorefrontUsers_GetToken"  # noqa: S105 - ditto
OP_USERS_MERGE: Final = "StorefrontUsers_MergeAnonymous"
OP_USERS_REGISTER: Final = "StorefrontUsers_Register"

# At most this many attempts per call for transient failures (the first one included).
MAX_ATTEMPTS: Final = 2
# Storefronts asked for per Storefronts_GetAll page.
STOREFRONTS_PAGE_SIZE: Final = 100
# An access token is renewed this long before ``expires_in`` runs out (the vendor samples use
# 60 s), or at half its lifetime when that is shorter.
ACCESS_TOKEN_MARGIN_S: Final = 60.0
# Lifetime assumed for an access token whose answer carries no usable ``expires_in``.
DEFAULT_ACCESS_TOKEN_LIFETIME_S: Final = 300.0
# A call cancelled by its caller after waiting this share of ``timeout_s`` counts as a failure
# for the breaker: the caller gave up because the API was slow (the token service bounds its
# work by the same ``timeout_s``, so its deadline usually fires just before this client's own).
SLOW_CANCEL_SHARE: Final = 0.5
# ProblemDetails titles quoted in error messages are cut to this length.
_MAX_DETAIL = 200
# A retry is not started with less time than this left before the deadline.
_MIN_ATTEMPT_S = 0.01
_TIMED_OUT = "timed out"
_JSON = "application/json"
_TEXT = "text/plain"


@dataclass(frozen=True, slots=True)
class StorefrontUser:
    """A StorefrontUserDto; every field may be missing in the answer."""

    user_id: str | None
    tenant_id: int | None
    storefront_id: int | None
    is_anonymous: bool | None


@dataclass(frozen=True, slots=True)
class Storefront:
    """A StorefrontDto; every field may be missing in the answer."""

    id: int | None
    tenant_id: int | None
    name: str | None
    type: str | None
    status: str | None


@dataclass(frozen=True, slots=True)
class _Answer:
    """An HTTP answer, read in full."""

    status: int
    content_type: str
    body: bytes


def create_api_session(settings: CustomersCanvasSettings) -> aiohttp.ClientSession:
    """The one pooled session for the API: explicit timeouts, no cookies, statuses left to us."""
    timeout = aiohttp.ClientTimeout(
        total=settings.timeout_s,
        # Half the budget at most for the TCP/TLS connect, so a connect that times out (nothing
        # sent) still leaves time for the one retry.
        connect=settings.timeout_s / 2,
    )
    return aiohttp.ClientSession(
        timeout=timeout,
        # The API is stateless; a cookie it sets must never leak into another call.
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
        headers={"User-Agent": "cc-sidecar"},
    )


class CircuitBreaker:
    """Holds calls back after ``failures`` consecutive failures, for ``open_s`` seconds.

    Closed: every call goes through. Open: every call raises CircuitOpen at once. After
    ``open_s`` one call (the probe) goes through while the others are still held back; its
    success closes the circuit, its failure opens it again for another ``open_s``.
    """

    def __init__(
        self,
        failures: int,
        open_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
        pages_without_token: Callable[[], float] | None = None,
    ) -> None:
        self._threshold = failures
        self._open_s = open_s
        self._clock = clock
        self._on_change = on_change
        self._pages_without_token = pages_without_token
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        # When the current outage began, and the pages served without a token by then: the
        # outage is logged once when it begins and once when it ends, never per request.
        self._outage_began: float | None = None
        self._pages_before_outage = 0.0

    @property
    def is_open(self) -> bool:
        """True from the moment the circuit opens until a probe succeeds."""
        return self._opened_at is not None

    def admit(self, operation: str) -> bool:
        """Let a call through, or raise CircuitOpen; True when the call is the half-open probe."""
        if self._opened_at is None:
            return False
        remaining = self._opened_at + self._open_s - self._clock()
        if remaining > 0 or self._probing:
            raise CircuitOpen(
                operation, f"held back after repeated failures (retry in {max(remaining, 0):.1f} s)"
            )
        self._probing = True
        return True

    def succeeded(self, probe: bool) -> None:
        """The service answered."""
        if probe:
            self._probing = False
            self._set_open(None)
            self._log_outage_ended()
        elif self._opened_at is None:
            self._failures = 0
        # A late success of a call let through before the circuit opened changes nothing: only
        # the probe decides when it closes.

    def failed(self, probe: bool) -> None:
        """The service could not be reached, failed or was too slow."""
        if probe:
            self._probing = False
            self._set_open(self._clock())
            # Still the same outage: its beginning was logged, its end will be.
            log.debug("Storefront API probe failed; circuit open for %.1f s more", self._open_s)
        elif self._opened_at is None:
            self._failures += 1
            if self._failures >= self._threshold:
                # _set_open resets the count, so take it first.
                failures = self._failures
                self._set_open(self._clock())
                self._outage_began = self._opened_at
                self._pages_before_outage = self._pages_served_without_token()
                log.warning(
                    "Storefront API failed %d times in a row;"
                    " circuit open (a probe every %.1f s until it answers)",
                    failures,
                    self._open_s,
                    extra={"_every_time": True},
                )

    def abandoned(self, probe: bool) -> None:
        """The call was cancelled before it had an outcome: the next call may probe instead."""
        if probe:
            self._probing = False

    def _log_outage_ended(self) -> None:
        began = self._outage_began if self._outage_began is not None else self._clock()
        pages = self._pages_served_without_token() - self._pages_before_outage
        self._outage_began = None
        log.warning(
            "Storefront API answers again; circuit closed after %.1f s open,"
            " %d editor pages served without a token meanwhile",
            self._clock() - began,
            pages,
            extra={"_every_time": True, "pages_without_token": int(pages)},
        )

    def _pages_served_without_token(self) -> float:
        return 0.0 if self._pages_without_token is None else self._pages_without_token()

    def _set_open(self, opened_at: float | None) -> None:
        was_open = self._opened_at is not None
        self._opened_at = opened_at
        self._failures = 0
        if self._on_change is not None and was_open != (opened_at is not None):
            self._on_change(opened_at is not None)


class StorefrontApiClient:
    """The Storefront API calls the sidecar makes, with its access token, retries and breaker."""

    def __init__(
        self,
        settings: CustomersCanvasSettings,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_backoff_s: float = 0.05,
    ) -> None:
        self._settings = settings
        self._session = session
        self._metrics = metrics
        self._clock = clock
        self._timeout_s = settings.timeout_s
        self._retry_backoff_s = retry_backoff_s
        self._api_root = str(URL(settings.api_url)).rstrip("/") + API_PREFIX
        self._token_url = URL(settings.effective_token_url)
        self._tenant_query: dict[str, str] = (
            {} if settings.tenant_id is None else {"tenantId": str(settings.tenant_id)}
        )
        self._access_token: str | None = None
        self._access_token_renew_at = 0.0
        self._token_task: asyncio.Task[str] | None = None
        self.breaker = CircuitBreaker(
            settings.breaker.failures,
            settings.breaker.open_s,
            clock=clock,
            on_change=lambda is_open: metrics.breaker_open.set(1 if is_open else 0),
            pages_without_token=metrics.token_unavailable.total,
        )
        metrics.breaker_open.set(0)

    # -- operations ---------------------------------------------------------------------------

    async def list_storefronts(self) -> list[Storefront]:
        """Storefronts_GetAll, every page: the storefronts the account can see."""
        storefronts: list[Storefront] = []
        while True:
            query = {"skip": str(len(storefronts)), "take": str(STOREFRONTS_PAGE_SIZE)}
            total, page = await self._call(
                OP_STOREFRONTS_GET_ALL,
                "GET",
                self._url("/storefronts", query),
                parse=lambda answer: _page_of(OP_STOREFRONTS_GET_ALL, answer, _storefront),
            )
            storefronts.extend(page)
            # A short page ends it even if ``total`` disagrees, so a miscounting server cannot
            # keep this loop going.
            if len(page) < STOREFRONTS_PAGE_SIZE or (total is not None and len(storefronts) >= total):
                return storefronts

    async def storefront_tenants(self) -> dict[int, int | None]:
        """Each storefront the account can see, with the tenant the API reports for it."""
        return {
            storefront.id: storefront.tenant_id
            for storefront in await self.list_storefronts()
            if storefront.id is not None
        }

    async def get_user(self, storefront_id: int, user_id: str) -> StorefrontUser:
        """StorefrontUsers_Get; raises :class:`~proxy.errors.NotFound` when the user is missing."""
        return await self._call(
            OP_USERS_GET,
            "GET",
            self._url(f"/storefront-users/{_path_segment(user_id)}", {"storefrontId": storefront_id}),
            parse=lambda answer: _user(_json_object(OP_USERS_GET, answer)),
        )

    async def create_user(self, storefront_id: int, user_id: str, *, is_anonymous: bool) -> StorefrontUser:
        """StorefrontUsers_Create; raises :class:`~proxy.errors.UserConflict` when it exists."""
        return await self._call(
            OP_USERS_CREATE,
            "POST",
            self._url("/storefront-users", {"storefrontId": storefront_id}),
            json_body={"storefrontUserId": user_id, "isAnonymous": is_anonymous},
            parse=lambda answer: _user(_json_object(OP_USERS_CREATE, answer)),
        )

    async def ensure_user(self, storefront_id: int, user_id: str, *, is_anonymous: bool) -> None:
        """Make sure the StorefrontUser exists: Get, and Create on 404 (a 409 there is success)."""
        try:
            await self.get_user(storefront_id, user_id)
        except NotFound:
            try:
                await self.create_user(storefront_id, user_id, is_anonymous=is_anonymous)
            except UserConflict:
                # Someone else (another sidecar, another request) created it since our Get.
                log.debug("user created concurrently", extra={"storefront_id": storefront_id})

    async def get_token(self, storefront_id: int, user_id: str) -> str:
        """StorefrontUsers_GetToken: the customer token, from the bare text/plain body."""
        return await self._call(
            OP_USERS_GET_TOKEN,
            "GET",
            self._url(
                "/storefront-users/token",
                {"storefrontUserId": user_id, "storefrontId": storefront_id},
            ),
            accept=_TEXT,
            parse=_token_text,
        )

    async def merge_anonymous(self, storefront_id: int, anonymous_user_id: str, regular_user_id: str) -> None:
        """StorefrontUsers_MergeAnonymous: a guest's data into a regular customer.

        Raises :class:`~proxy.errors.NotFound` when either user is missing and
        :class:`~proxy.errors.UserConflict` when the guest was merged already.
        """
        await self._call(
            OP_USERS_MERGE,
            "POST",
            self._url("/storefront-users/merge-anonymous", {"storefrontId": storefront_id}),
            json_body={
                "anonymousStorefrontUserId": anonymous_user_id,
                "regularStorefrontUserId": regular_user_id,
            },
            parse=lambda answer: None,
        )

    async def register(self, storefront_id: int, user_id: str) -> StorefrontUser:
        """StorefrontUsers_Register: turn an existing anonymous user into a regular one."""
        return await self._call(
            OP_USERS_REGISTER,
            "POST",
            self._url("/storefront-users/register", {"storefrontId": storefront_id}),
            json_body={"storefrontUserId": user_id},
            parse=lambda answer: _user(_json_object(OP_USERS_REGISTER, answer)),
        )

    async def warn_missing_storefronts(self, storefront_ids: Iterable[int]) -> None:
        """At start-up: log a warning for each configured storefront the account lacks.

        Never raises: the API may be down at start-up, which is logged and left at that.
        """
        wanted = sorted(set(storefront_ids))
        try:
            storefronts = await self.list_storefronts()
        except StorefrontApiError as exc:
            log.warning("could not check the configured storefronts: %s", exc)
            return
        known = {storefront.id for storefront in storefronts}
        for storefront_id in wanted:
            if storefront_id not in known:
                log.warning(
                    "storefront %d is not among the %d storefronts of this API account%s; "
                    "register it in BackOffice or fix storefront_id",
                    storefront_id,
                    len(known),
                    "" if self._settings.tenant_id is None else f" (tenant {self._settings.tenant_id})",
                    # Once per storefront at start-up, each a different fact: never sampled.
                    extra={"storefront_id": storefront_id, "_every_time": True},
                )

    # -- one call -----------------------------------------------------------------------------

    def _url(self, path: str, query: Mapping[str, str | int]) -> URL:
        """The call's URL; ``path`` is already percent-encoded and must stay exactly so."""
        full_query = {key: str(value) for key, value in query.items()} | self._tenant_query
        return URL(self._api_root + path, encoded=True).with_query(full_query)

    async def _call(
        self,
        operation: str,
        method: str,
        url: URL,
        *,
        parse: Callable[[_Answer], T],
        json_body: Mapping[str, object] | None = None,
        accept: str = _JSON,
    ) -> T:
        """One operation through breaker, access token, attempts, mapping, parsing and metrics."""
        try:
            probe = self.breaker.admit(operation)
        except CircuitOpen:
            self._count(operation, "circuit_open")
            raise
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            answer = await self._exchange(
                operation, method, url, json_body, accept, started + self._timeout_s
            )
            _raise_for_status(operation, answer)
            result = parse(answer)
        except asyncio.CancelledError:
            if loop.time() - started >= self._timeout_s * SLOW_CANCEL_SHARE:
                self._count(operation, "timeout")
                self.breaker.failed(probe)
            else:
                self.breaker.abandoned(probe)
            raise
        except StorefrontApiError as exc:
            self._count(operation, _outcome(exc))
            if isinstance(exc, StorefrontUnavailable | Unauthorized):
                self.breaker.failed(probe)
            else:
                self.breaker.succeeded(probe)
            raise
        self._count(operation, "ok")
        self.breaker.succeeded(probe)
        return result

    async def _exchange(
        self,
        operation: str,
        method: str,
        url: URL,
        json_body: Mapping[str, object] | None,
        accept: str,
        deadline: float,
    ) -> _Answer:
        """Send until an answer that is not retried; raise StorefrontUnavailable when none came.

        ``deadline`` (loop time) bounds everything: the wait for the access token, each
        attempt (as aiohttp's own timeout, so no second timer races it) and the backoff.
        """
        attempt = 1
        renewed = False
        while True:
            access_token = await self._wait_access_token(operation, deadline)
            headers = {"Authorization": f"Bearer {access_token}", "Accept": accept}
            try:
                answer = await self._send(
                    method, url, headers, _attempt_timeout(operation, deadline, self._timeout_s), json_body
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                # A connector error means nothing was sent, so even a POST may go again.
                sent = not isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
                detail = _TIMED_OUT if isinstance(exc, TimeoutError) else _connection_detail(exc)
                retry = attempt < MAX_ATTEMPTS and (method == "GET" or not sent)
                if retry and await self._backoff(operation, detail, deadline):
                    attempt += 1
                    continue
                raise StorefrontUnavailable(operation, detail) from exc
            if answer.status == 401 and not renewed:
                # The access token is no longer good (revoked, or its clock differs from ours):
                # drop it, get a new one, send once more.
                renewed = True
                self._drop_access_token(access_token)
                log.info("access token refused; renewing it", extra={"operation": operation})
                continue
            if (
                answer.status >= 500
                and method == "GET"
                and attempt < MAX_ATTEMPTS
                and await self._backoff(operation, f"HTTP {answer.status}", deadline)
            ):
                attempt += 1
                continue
            return answer

    async def _send(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        client_timeout: aiohttp.ClientTimeout,
        json_body: Mapping[str, object] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> _Answer:
        async with self._session.request(
            method,
            url,
            headers=headers,
            json=json_body,
            data=form,
            timeout=client_timeout,
            allow_redirects=False,
        ) as response:
            body = await response.read()
            return _Answer(response.status, response.content_type, body)

    async def _backoff(self, operation: str, reason: str, deadline: float) -> bool:
        """Wait a little before a retry, jittered so many sidecars do not retry in step.

        False (and no wait) when the deadline leaves no time worth a retry.
        """
        loop = asyncio.get_running_loop()
        delay = self._retry_backoff_s * (1 + random.random())  # noqa: S311 - jitter, not crypto
        if loop.time() + delay + _MIN_ATTEMPT_S >= deadline:
            return False
        log.info("retrying after %s", reason, extra={"operation": operation})
        await asyncio.sleep(delay)
        return True

    def _count(self, operation: str, outcome: str) -> None:
        self._metrics.api_calls.labels(operation=operation, outcome=outcome).inc()

    # -- access token -------------------------------------------------------------------------

    async def _wait_access_token(self, operation: str, deadline: float) -> str:
        """The access token, waited for no longer than the call's deadline."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            # No aiohttp timer runs in this task while it waits, so this timeout races nothing.
            async with asyncio.timeout(max(remaining, 0)):
                return await self._get_access_token()
        except TimeoutError:
            raise StorefrontUnavailable(operation, _TIMED_OUT) from None

    async def _get_access_token(self) -> str:
        """The cached access token, or the one a single shared fetch brings for every caller."""
        if self._access_token is not None and self._clock() < self._access_token_renew_at:
            return self._access_token
        task = self._token_task
        if task is None or task.done():
            task = asyncio.create_task(self._fetch_access_token())
            task.add_done_callback(_mark_retrieved)
            self._token_task = task
        # Shielded: a caller that is cancelled (timed out, client gone) leaves the fetch
        # running for the others, and its result is cached for the next caller.
        return await asyncio.shield(task)

    def _drop_access_token(self, refused: str) -> None:
        """Forget the access token the API refused (unless a newer one replaced it already)."""
        if self._access_token == refused:
            self._access_token = None

    async def _fetch_access_token(self) -> str:
        """POST the client credentials to the token endpoint; cache the access token."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self._settings.client_id,
            "client_secret": self._settings.client_secret.get_secret_value(),
        }
        if self._settings.scope:
            form["scope"] = self._settings.scope
        try:
            answer = await self._token_exchange(form)
            if answer.status in (400, 401):
                raise Unauthorized(
                    OP_TOKEN,
                    f"the token endpoint refused the client credentials ({_oauth_error(answer)})",
                    answer.status,
                )
            _raise_for_status(OP_TOKEN, answer)
            access_token, expires_in = _access_token_of(answer)
        except StorefrontApiError as exc:
            self._count(OP_TOKEN, _outcome(exc))
            raise
        self._count(OP_TOKEN, "ok")
        margin = min(ACCESS_TOKEN_MARGIN_S, expires_in / 2)
        self._access_token = access_token
        self._access_token_renew_at = self._clock() + expires_in - margin
        log.debug("access token obtained", extra={"expires_in_s": expires_in})
        return access_token

    async def _token_exchange(self, form: Mapping[str, str]) -> _Answer:
        """Send the token request within ``timeout_s``; again only if no connection was made."""
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        headers = {"Accept": _JSON}
        attempt = 1
        while True:
            timeout = _attempt_timeout(OP_TOKEN, deadline, self._timeout_s)
            try:
                return await self._send("POST", self._token_url, headers, timeout, form=form)
            except (aiohttp.ClientError, TimeoutError) as exc:
                detail = _TIMED_OUT if isinstance(exc, TimeoutError) else _connection_detail(exc)
                unsent = isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
                if unsent and attempt < MAX_ATTEMPTS and await self._backoff(OP_TOKEN, detail, deadline):
                    attempt += 1
                    continue
                raise StorefrontUnavailable(OP_TOKEN, detail) from exc


def _attempt_timeout(operation: str, deadline: float, timeout_s: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for one attempt: what is left until ``deadline``."""
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise StorefrontUnavailable(operation, _TIMED_OUT)
    # The connect gets half the budget at most, so a connect that times out (nothing sent)
    # leaves time for the one retry.
    return aiohttp.ClientTimeout(total=remaining, connect=min(remaining, timeout_s / 2))


# -- answers ----------------------------------------------------------------------------------


def _mark_retrieved(task: asyncio.Task[Any]) -> None:
    """Every waiter has the outcome already; keep asyncio from reporting it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _outcome(exc: StorefrontApiError) -> str:
    """The ``outcome`` metric label of a failed call."""
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, StorefrontUnavailable):
        return "timeout" if exc.detail == _TIMED_OUT else "unavailable"
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, UserConflict):
        return "conflict"
    if isinstance(exc, Unauthorized):
        return "unauthorized"
    return "bad_response"


def _connection_detail(exc: BaseException) -> str:
    """What went wrong with the connection, without the URL (its query names a customer)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without an answer"
    return f"connection failed ({type(exc).__name__})"


def _raise_for_status(operation: str, answer: _Answer) -> None:
    """Map an unsuccessful status onto the exception tree."""
    status = answer.status
    if 200 <= status < 300:
        return
    detail = _problem_title(answer)
    if status == 404:
        raise NotFound(operation, detail, status)
    if status == 409:
        raise UserConflict(operation, detail, status)
    if status in (401, 403):
        raise Unauthorized(operation, detail, status)
    if status >= 500:
        raise StorefrontUnavailable(operation, detail, status)
    raise BadResponse(operation, detail, status)


def _problem_title(answer: _Answer) -> str:
    """The ProblemDetails title (or detail), if the body is one; else a generic phrase."""
    try:
        problem = json.loads(answer.body)
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        for key in ("title", "detail"):
            text = problem.get(key)
            if isinstance(text, str) and text:
                return text[:_MAX_DETAIL]
    return "unexpected answer"


def _oauth_error(answer: _Answer) -> str:
    """The OAuth2 ``error`` code of a token endpoint refusal (never its other fields)."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str) and error.isascii() and len(error) <= 64:
        return error
    return f"HTTP {answer.status}"


def _json_of(operation: str, answer: _Answer) -> object:
    try:
        return json.loads(answer.body)
    except ValueError:
        raise BadResponse(operation, "the answer is not JSON", answer.status) from None


def _json_object(operation: str, answer: _Answer) -> dict[str, Any]:
    data = _json_of(operation, answer)
    if not isinstance(data, dict):
        raise BadResponse(operation, "the answer is not a JSON object", answer.status)
    return data


def _access_token_of(answer: _Answer) -> tuple[str, float]:
    """The access token and its lifetime in seconds from a token endpoint answer."""
    data = _json_object(OP_TOKEN, answer)
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise BadResponse(OP_TOKEN, "the answer carries no access_token", answer.status)
    token_type = data.get("token_type")
    if isinstance(token_type, str) and token_type.lower() != "bearer":
        raise BadResponse(OP_TOKEN, f"unsupported token_type {token_type[:20]!r}", answer.status)
    expires_in = data.get("expires_in")
    if isinstance(expires_in, str):
        try:
            expires_in = float(expires_in)
        except ValueError:
            expires_in = None
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = DEFAULT_ACCESS_TOKEN_LIFETIME_S
    return access_token, float(expires_in)


def _path_segment(value: str) -> str:
    """``value`` percent-encoded as one path segment, dots too when it is nothing but dots.

    quote() leaves "." alone, so "." and ".." would be dot-segments that a server (or a proxy
    before it) normalising the path resolves to another URL.
    """
    if value and value.strip(".") == "":
        return "%2E" * len(value)
    return quote(value, safe="")


def _token_text(answer: _Answer) -> str:
    """The customer token: the bare body (or a JSON string, from a server ignoring Accept)."""
    try:
        text = answer.body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadResponse(OP_USERS_GET_TOKEN, "the token is not text", answer.status) from None
    if text.startswith('"') and answer.content_type == _JSON:
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        if isinstance(decoded, str):
            text = decoded.strip()
    if not text:
        raise BadResponse(OP_USERS_GET_TOKEN, "the token is empty", answer.status)
    if any(c.isspace() for c in text) or not text.isascii():
        raise BadResponse(OP_USERS_GET_TOKEN, "the token is not a single ASCII word", answer.status)
    return text


def _page_of(
    operation: str, answer: _Answer, item: Callable[[dict[str, Any]], T]
) -> tuple[int | None, list[T]]:
    """``{"total": int, "items": [...]}``: the total (if given) and the items that are objects."""
    data = _json_object(operation, answer)
    items = data.get("items")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise BadResponse(operation, "items is not a list", answer.status)
    return _int(data.get("total")), [item(entry) for entry in items if isinstance(entry, dict)]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _user(data: dict[str, Any]) -> StorefrontUser:
    return StorefrontUser(
        user_id=_str(data.get("userId")),
        tenant_id=_int(data.get("tenantId")),
        storefront_id=_int(data.get("storefrontId")),
        is_anonymous=_bool(data.get("isAnonymous")),
    )


def _storefront(data: dict[str, Any]) -> Storefront:
    return Storefront(
        id=_int(data.get("id")),
        tenant_id=_int(data.get("tenantId")),
        name=_str(data.get("name")),
        type=_str(data.get("type")),
        status=_str(data.get("status")),
    )
