"""Who the customer is: a logged-in id (header, response header, session check) or a guest.

Rules (contract, "Identity"):
- A logged-in id is trimmed and must be 1-200 printable ASCII characters without spaces, not
  ``.``/``..`` nor a sibling route word of ``storefront-users/{id}`` (``token``,
  ``merge-anonymous``, ``register``, any case); anything else is ignored with a warning and
  never reaches the API.
- The identity header is believed only from trusted_networks; from anyone else every
  spelling of it (any case, ``_`` for ``-``) is stripped before anything reads it.
- A guest's StorefrontUser id is ``anon-`` + HMAC-SHA256(secret, storefront id + session
  cookie), so the shop's session id never leaves the sidecar; without a session cookie a
  random one is minted. Only the shop's session cookie or a valid guest cookie shows a
  returning browser: a minted guest (whatever other cookies the request carried) gets no
  StorefrontUser until its guest cookie comes back. The guest id is kept in the signed
  ``cc_sidecar_guest`` cookie, which wins over the session cookie, so it survives the shop
  rotating its session at login.
- The session check asks the shop about a request as the page request itself reached it (Host,
  X-Forwarded-*, cookies); an answer that names neither a customer nor a guest is counted and
  logged, and the request is a guest's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs
from cachetools import TTLCache
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import Counter
from yarl import URL

from proxy.config import SessionCheck, StorefrontSettings
from proxy.cookies import RequestCookies
from proxy.errors import InvalidIdentity, StoreUnavailable
from proxy.singleflight import SingleFlight
from proxy.store import StoreKey, TokenStore
from proxy.upstream import OutgoingHeaders

log = logging.getLogger("proxy.identity")

GUEST_COOKIE = "cc_sidecar_guest"
GUEST_PREFIX = "anon-"
# A guest keeps their storage across visits for this long (the cookie is renewed with each token).
GUEST_COOKIE_MAX_AGE_S = 30 * 24 * 3600
MAX_ID_LENGTH = 200
# Path segments that are not ids: "." and ".." (a server normalising the path would send the call
# to another URL), and the words of storefront-users/{id}'s sibling routes (GetToken,
# MergeAnonymous, Register), which the Storefront API itself cannot tell from an id. Any case,
# since ASP.NET routing ignores it.
DOT_SEGMENTS = frozenset({".", ".."})
RESERVED_ROUTE_WORDS = frozenset({"token", "merge-anonymous", "register"})
# Sessions whose logged-in customer (from a response header) is remembered, per storefront.
REMEMBERED_SESSIONS = 100_000
# What the shop's response header said about a session is kept this long after it last said it
# (every page that names the customer starts it again).
REMEMBERED_SESSION_TTL_S = 24 * 3600.0
# Session-check answers kept per storefront.
SESSION_CHECK_CACHE_SIZE = 100_000
# An unusable session-check answer is logged at most this often per storefront and cause.
SESSION_CHECK_WARN_INTERVAL_S = 60.0
# What a session check carries of the page's request (see SessionChecker), lower-case; and every
# X-Forwarded-* the page carried (a trusted hop's -Port and -Prefix are read by Symfony, Laravel).
_PAGE_HEADERS = frozenset((b"host", b"forwarded", b"cookie", b"user-agent"))
_PAGE_HEADER_PREFIX = b"x-forwarded-"
_SIGNATURE_BYTES = 16


def header_key(name: str) -> str:
    """The spelling-blind key of a header name: lower case, every byte but a letter or digit as ``-``.

    CGI-style servers read ``X_Shop_User`` (PHP-FPM, gunicorn), ``X.Shop.User`` (PHP's own
    server) and any other separator (lighttpd's FastCGI) as the same header.
    """
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in name.lower())


def valid_customer_id(raw: str) -> str:
    """Return the trimmed id, or raise InvalidIdentity if it breaks the id rules."""
    # ASCII whitespace only: str.strip() would also trim U+00A0 and friends, so "42\u00a0" (a
    # different shop id) would become customer "42".
    value = raw.strip(string.whitespace)
    if not value:
        raise InvalidIdentity("empty customer id")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentity(f"customer id longer than {MAX_ID_LENGTH} characters")
    # Printable ASCII without the space: "!" to "~".
    if not (value.isascii() and value.isprintable()) or " " in value:
        raise InvalidIdentity("customer id has characters outside printable ASCII")
    if value.startswith(GUEST_PREFIX):
        # A shop id that looks like a guest id could take over a guest's storage.
        raise InvalidIdentity(f"customer id starts with the reserved prefix {GUEST_PREFIX!r}")
    if value in DOT_SEGMENTS:
        raise InvalidIdentity(f"customer id {value!r} is a path dot-segment")
    if value.lower() in RESERVED_ROUTE_WORDS:
        raise InvalidIdentity(
            f"customer id {value!r} is reserved: storefront-users/{value.lower()} "
            "is another Storefront API operation"
        )
    return value


class GuestKeys:
    """Signs guest cookies and derives guest ids; both keyed by ``secret``, with separate keys."""

    def __init__(self, secret: str) -> None:
        master = secret.encode()
        self._cookie_key = hmac.new(master, b"cc-sidecar guest cookie v1", hashlib.sha256).digest()
        self._id_key = hmac.new(master, b"cc-sidecar guest id v1", hashlib.sha256).digest()
        self._session_key = hmac.new(master, b"cc-sidecar session key v1", hashlib.sha256).digest()

    def guest_id_for_session(self, storefront_id: int, session_value: str) -> str:
        """The stable guest id of a shop session; the session id itself cannot be recovered."""
        digest = hmac.new(self._id_key, f"{storefront_id}\0{session_value}".encode(), hashlib.sha256)
        return GUEST_PREFIX + digest.hexdigest()[:40]

    def session_key(self, storefront_id: int, session_value: str) -> str:
        """A cache key for a session that is not the session id (so caches never hold one)."""
        digest = hmac.new(self._session_key, f"{storefront_id}\0{session_value}".encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    @staticmethod
    def mint_guest_id() -> str:
        """A fresh random guest id, for a browser that has no session yet."""
        return GUEST_PREFIX + secrets.token_hex(20)

    def sign(self, storefront_id: int, guest_id: str) -> str:
        """The guest cookie's value: the id and its signature, bound to the storefront."""
        return f"{guest_id}.{self._signature(storefront_id, guest_id)}"

    def verify(self, storefront_id: int, value: str) -> str | None:
        """The guest id in a cookie value, or None if it was not signed by this sidecar."""
        guest_id, dot, signature = value.rpartition(".")
        if not dot or not guest_id.startswith(GUEST_PREFIX) or len(guest_id) > MAX_ID_LENGTH:
            return None
        expected = self._signature(storefront_id, guest_id)
        return guest_id if hmac.compare_digest(expected, signature) else None

    def _signature(self, storefront_id: int, guest_id: str) -> str:
        mac = hmac.new(self._cookie_key, f"{storefront_id}\0{guest_id}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()[:_SIGNATURE_BYTES]).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Guest:
    """A guest's id and where it came from."""

    user_id: str
    # The request carried a valid guest cookie with this id.
    from_cookie: bool
    # Neither a valid guest cookie nor the shop's session cookie: a first visit (or a client that
    # keeps no cookies, or one sending made-up ones), whose id was just minted.
    minted: bool = False


class GuestRecogniser:
    """Finds a request's guest id: valid guest cookie, else derived from the session, else minted."""

    def __init__(self, storefront: StorefrontSettings, keys: GuestKeys) -> None:
        self._storefront_id = storefront.storefront_id
        self._session_cookie = storefront.session_cookie
        self._keys = keys

    def cookie_guest(self, cookies: RequestCookies) -> str | None:
        """The guest id of a valid guest cookie, if the request has exactly one.

        A guest cookie sent twice is ambiguous, as the session cookie is (see
        :meth:`session_value`): the second is one planted from a sibling subdomain or over plain
        http, whose guest (and whose work, merged at the planter's login) its planter holds.
        """
        value = cookies.only(GUEST_COOKIE)
        return self._keys.verify(self._storefront_id, value) if value else None

    def guest(self, cookies: RequestCookies) -> Guest:
        """The guest this request belongs to."""
        value = cookies.only(GUEST_COOKIE)
        if value:
            guest_id = self._keys.verify(self._storefront_id, value)
            if guest_id is not None:
                return Guest(guest_id, from_cookie=True)
            log.warning("ignored a guest cookie with a bad signature")
        elif value is None and GUEST_COOKIE in cookies:
            log.warning("ignored a guest cookie sent twice")
        session = self.session_value(cookies)
        if session:
            return Guest(self._keys.guest_id_for_session(self._storefront_id, session), from_cookie=False)
        return Guest(self._keys.mint_guest_id(), from_cookie=False, minted=True)

    def session_value(self, cookies: RequestCookies) -> str | None:
        """The shop's session id from its cookie (never logged, never sent to the API).

        None without one, and for a session cookie sent twice: which one the shop reads depends
        on its framework, so a cache keyed by either could answer for the other's customer.
        """
        if self._session_cookie is None:
            return None
        return cookies.only(self._session_cookie) or None

    def key_of(self, session_value: str) -> str:
        """The per-session cache key of a session id (one the shop just set, say)."""
        return self._keys.session_key(self._storefront_id, session_value)

    def session_key(self, cookies: RequestCookies) -> str | None:
        """A key for per-session caches, derived from the session cookie; None without one."""
        session = self.session_value(cookies)
        return self._keys.session_key(self._storefront_id, session) if session else None

    def signed(self, guest_id: str) -> str:
        """The guest cookie's value for ``guest_id``, signed for this storefront."""
        return self._keys.sign(self._storefront_id, guest_id)


class ResponseHeaderMemory:
    """Remembers, per session, the customer the shop last named in its response header.

    Kept in the token store and read from it, so with a shared store what one replica saw (a
    login, a logout) every replica sees. A shared store that is unavailable falls back to what
    this replica itself saw, as the memory store would.
    """

    def __init__(self, store: TokenStore, size: int = REMEMBERED_SESSIONS) -> None:
        self._store = store
        # Only a shared store can fail; this replica's own view is read only then.
        # It ages like the store's entries: an outage must not bring back a day-old login.
        self._seen_here: TTLCache[str, str] | None = (
            TTLCache(maxsize=size, ttl=REMEMBERED_SESSION_TTL_S) if store.shared else None
        )
        # Sessions whose end (a logout) the shared store missed while it was down: nobody's here
        # until the delete is sent, which happens as soon as the store answers again. Without
        # this the store would name the customer again for a day once it is back.
        self._unsent_forgets: set[str] = set()

    async def remember(self, session_key: str, user_id: str) -> None:
        """The shop named ``user_id`` on a response to this session."""
        if self._seen_here is not None:
            self._seen_here[session_key] = user_id
        self._unsent_forgets.discard(session_key)
        try:
            await self._store.put(
                StoreKey("session", session_key), user_id.encode(), REMEMBERED_SESSION_TTL_S
            )
        except StoreUnavailable:
            return
        await self._send_unsent_forgets()

    async def forget(self, session_key: str) -> None:
        """The shop named nobody on a page of this session, or ended the session: no customer now."""
        if self._seen_here is not None:
            self._seen_here.pop(session_key, None)
        try:
            await self._store.delete(StoreKey("session", session_key))
        except StoreUnavailable:
            if len(self._unsent_forgets) >= REMEMBERED_SESSIONS:
                self._unsent_forgets.clear()  # bounded; the store's TTL ends the rest
            self._unsent_forgets.add(session_key)
            return
        self._unsent_forgets.discard(session_key)
        await self._send_unsent_forgets()

    async def recall(self, session_key: str) -> str | None:
        """The customer last named for this session, if any."""
        if session_key in self._unsent_forgets:
            return None
        try:
            value = await self._store.get(StoreKey("session", session_key))
        except StoreUnavailable:
            return self._seen_here.get(session_key) if self._seen_here is not None else None
        await self._send_unsent_forgets()
        return value.decode() if value is not None else None

    async def _send_unsent_forgets(self) -> None:
        """Send the deletes the store missed, now that it answered; stop at the first failure."""
        while self._unsent_forgets:
            session_key = next(iter(self._unsent_forgets))
            try:
                await self._store.delete(StoreKey("session", session_key))
            except StoreUnavailable:
                return
            self._unsent_forgets.discard(session_key)


class SessionChecker:
    """Asks the shop who is logged in, reaching it as the page request did; cached per session.

    The GET carries what the shop saw with the page itself (built once, by
    :meth:`proxy.upstream.Upstream.request_headers`): the browser's Host, so a host allow-list
    lets it in; the X-Forwarded-* of the page (a trusted hop's believed, anyone else's
    replaced), so a shop behind a TLS ingress does not redirect it to https; the browser's
    cookies less the sidecar's own; and the User-Agent, for sessions bound to it. It follows no
    redirect. Answers:

    - a 2xx whose JSON has a customer id at ``id_field``: that customer;
    - 401 or 403 (or a 2xx with ``null`` at ``id_field``): a guest;
    - anything else (another status, a 2xx without ``id_field`` or without JSON, no answer):
      the request is a guest's too, but the answer is counted by outcome and logged, at most
      once a minute per cause: it usually means the check is misconfigured, and then every
      customer would silently become a guest.

    What the shop answered is cached per session for ``ttl_s``; a check that got no answer is not.
    """

    def __init__(
        self,
        check: SessionCheck,
        upstream_base: str,
        session: aiohttp.ClientSession,
        timeout_s: float,
        *,
        outcomes: Counter,
        storefront: str,
        own_cookies: tuple[str, ...],
        clock: Callable[[], float],
    ) -> None:
        relative = check.url.startswith("/")
        url = upstream_base.rstrip("/") + check.url if relative else check.url
        self._url = URL(url)
        # A check on another host (an absolute url) is addressed to that host, not the shop's.
        self._page_headers = _PAGE_HEADERS if relative else _PAGE_HEADERS - {b"host"}
        self._id_field = check.id_field
        self._path = tuple(check.id_field.split("."))
        self._session = session
        self._timeout_s = timeout_s
        self._outcomes = outcomes
        self._storefront = storefront
        self._own_cookies = own_cookies
        self._clock = clock
        self._warned_at: dict[tuple[str, str], float] = {}
        self._answers: TTLCache[str, str | None] = TTLCache(maxsize=SESSION_CHECK_CACHE_SIZE, ttl=check.ttl_s)
        self._in_flight: SingleFlight[str, str | None] = SingleFlight()

    def forget(self, session_key: str) -> None:
        """The shop replaced or deleted this session (a login, a logout): its answer is void."""
        self._answers.pop(session_key, None)

    async def customer_id(self, session_key: str, page: OutgoingHeaders) -> str | None:
        """The logged-in customer of this session, or None for a guest (and when no one can tell).

        ``page`` is what the page request went upstream with.
        """
        try:
            return self._answers[session_key]
        except KeyError:
            pass
        task = self._in_flight.run(session_key, lambda: self._ask(session_key, page))
        # Shielded: one request going away must not cancel the answer the others wait for.
        return await asyncio.shield(task)

    def _headers(self, page: OutgoingHeaders) -> CIMultiDict[str]:
        headers = page.select(self._page_headers, _PAGE_HEADER_PREFIX)
        pairs = [
            pair.strip()
            for value in headers.popall(hdrs.COOKIE, ())
            for pair in value.split(";")
            if pair.strip() and pair.partition("=")[0].strip() not in self._own_cookies
        ]
        if pairs:
            headers[hdrs.COOKIE] = "; ".join(pairs)
        headers[hdrs.ACCEPT] = "application/json"
        return headers

    async def _ask(self, session_key: str, page: OutgoingHeaders) -> str | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._session.get(
                    self._url, headers=self._headers(page), allow_redirects=False
                ) as response:
                    status = response.status
                    body = await response.read() if 200 <= status < 300 else b""
        except (aiohttp.ClientError, TimeoutError) as exc:
            name = type(exc).__name__
            self._unusable(
                "error", name, "session check got no answer (%s); treating the request as a guest's", name
            )
            return None
        customer = self._customer(status, body)
        self._answers[session_key] = customer
        return customer

    def _customer(self, status: int, body: bytes) -> str | None:
        """The customer the shop's answer names; None for a guest or an answer that names nobody."""
        if status in (401, 403):
            self._count("guest")
            return None
        if not 200 <= status < 300:
            self._unusable(
                "bad_status",
                str(status),
                "session check answered HTTP %d, neither a customer (2xx with JSON) nor a guest "
                "(401 or 403); treating the request as a guest's",
                status,
            )
            return None
        try:
            document = json.loads(body)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
            self._unusable(
                "not_json",
                "",
                "session check answered HTTP %d without a JSON body; treating the request as a guest's",
                status,
            )
            return None
        found, raw = _field(document, self._path)
        if not found:
            self._unusable(
                "missing_field",
                self._id_field,
                "session check's JSON has no %s (id_field); treating the request as a guest's",
                self._id_field,
            )
            return None
        if raw is None:
            self._count("guest")
            return None
        try:
            if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                kind = type(raw).__name__
                raise InvalidIdentity(f"{self._id_field} is a JSON {kind}, not a string or number")
            customer = valid_customer_id(str(raw))
        except InvalidIdentity as exc:
            self._unusable("invalid_id", "", "session check named an invalid customer id: %s", exc)
            return None
        self._count("customer")
        return customer

    def _count(self, outcome: str) -> None:
        self._outcomes.labels(self._storefront, outcome).inc()

    def _unusable(self, outcome: str, detail: str, message: str, *args: object) -> None:
        """Count an answer that is neither a customer nor a guest; warn once a minute per cause."""
        self._count(outcome)
        now = self._clock()
        cause = (outcome, detail)
        last = self._warned_at.get(cause)
        if last is not None and now - last < SESSION_CHECK_WARN_INTERVAL_S:
            return
        self._warned_at[cause] = now
        # Limited here per storefront and cause already; the log's own once-a-minute-per-message
        # limit would merge two storefronts' or two statuses' warnings into one.
        log.warning(message, *args, extra={"outcome": outcome, "_every_time": True})


def _field(document: object, path: tuple[str, ...]) -> tuple[bool, object]:
    """Whether the dotted path exists in the JSON document, and the value found there."""
    for part in path:
        if not isinstance(document, dict) or part not in document:
            return False, None
        document = document[part]
    return True, document


def header_value(headers: CIMultiDictProxy[str], name: str) -> str | None:
    """The one value of a header, or None if absent or sent more than once (ambiguous)."""
    values = headers.getall(name, ())
    return values[0] if len(values) == 1 else None
