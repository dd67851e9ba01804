"""The shop listener's request handler: route, identify, forward, attach the token.

:meth:`ShopHandler.__call__` is the one place errors become HTTP responses, and where each
request is counted and access-logged. One request, in order:
1. Route to a storefront (421 if none); answer ``Expect: 100-continue`` (the header is per hop).
2. Strip the identity header in every spelling unless the peer is trusted (before anything
   reads it), and the client's X-Forwarded-* likewise.
3. ``/.cc-sidecar/*`` is answered by :mod:`proxy.sidecar_paths` and never forwarded.
4. Editor GETs start the customer's token work at once, concurrently with the shop's
   response (unless Fetch Metadata marks another site asking: ``proxy.fetch_metadata``); a
   request that brings a guest cookie and a logged-in id starts the merge (one per logged-in
   session: ``proxy.merged_sessions``). New users and merges are charged to the client and the
   storefront (``proxy.budget``).
5. A request body is read in full first (:mod:`proxy.buffering`). The shop's response is
   streamed back (held for a client slower than the shop); on an editor page with status 200
   the token is attached (HTML element, headers, cookie; the shop's CORS read permissions
   removed) or, if Customer's Canvas could not give one in time, the page goes out as the shop
   sent it, marked ``X-CC-Sidecar: token-unavailable`` (``token-deferred`` over budget,
   ``token-withheld`` for another site).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final

from aiohttp import HttpVersion10, HttpVersion11, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.access_log import AccessLog
from proxy.budget import Budget, client_address
from proxy.buffering import Buffering
from proxy.client_gate import ClientGate
from proxy.client_response import CLIENT_GONE, decoded_path, parsed_head, write_whole
from proxy.config import StorefrontSettings
from proxy.cookies import (
    CookieSet,
    RequestCookies,
    cookie_set,
    delete_cookie_value,
    over_https,
    replaces_session,
    set_cookie_value,
)
from proxy.errors import (
    BodyRefused,
    BodyTooLarge,
    CircuitOpen,
    ClientBusy,
    ClientGone,
    InvalidIdentity,
    OverBudget,
    SidecarError,
    StorefrontApiError,
    TempSpaceFull,
    UpstreamError,
)
from proxy.fetch_metadata import (
    page_may_carry_token,
    strip_cors,
)
from proxy.identity import (
    GUEST_COOKIE,
    GUEST_COOKIE_MAX_AGE_S,
    GuestKeys,
    GuestRecogniser,
    ResponseHeaderMemory,
    SessionChecker,
    header_key,
    header_value,
    valid_customer_id,
)
from proxy.injection import (
    ContentDecoder,
    ContentEncoder,
    HtmlInjector,
    Placements,
    inject_html_at,
    is_html,
    response_coding,
)
from proxy.log import RequestContext, request_context
from proxy.merged_sessions import MergedSessions, session_of
from proxy.metrics import LatencyHistogram, Metrics
from proxy.page_script import CSP_HEADER, CSP_REPORT_ONLY_HEADER, script_nonce, script_tag
from proxy.payload import PayloadMaker, render_element
from proxy.routing import (
    PathMatcher,
    Router,
    TrustedNetworks,
    has_encoded_separator,
    is_sidecar_path,
    normalise_path,
    origin_form,
    parse_host,
)
from proxy.sidecar_paths import STATUS_HEADER, SidecarRequest, sidecar_paths
from proxy.store import TokenStore
from proxy.tokens import Charge, Customer, CustomerToken, MergeOutcome, TokenService
from proxy.upstream import BodyFilter, OutgoingHeaders, Upstream, is_websocket_upgrade, response_headers

# aiohttp's header names as compiled-in constants: compiled code looks ``hdrs.X`` up at each use.
_ACCEPT_ENCODING: Final = hdrs.ACCEPT_ENCODING
_CACHE_CONTROL: Final = hdrs.CACHE_CONTROL
_CONNECTION: Final = hdrs.CONNECTION
_CONTENT_ENCODING: Final = hdrs.CONTENT_ENCODING
_CONTENT_LENGTH: Final = hdrs.CONTENT_LENGTH
_CONTENT_TYPE: Final = hdrs.CONTENT_TYPE
_COOKIE: Final = hdrs.COOKIE
_ETAG: Final = hdrs.ETAG
_EXPECT: Final = hdrs.EXPECT
_EXPIRES: Final = hdrs.EXPIRES
_FORWARDED: Final = hdrs.FORWARDED
_HOST: Final = hdrs.HOST
_LAST_MODIFIED: Final = hdrs.LAST_MODIFIED
_RETRY_AFTER: Final = hdrs.RETRY_AFTER
_SET_COOKIE: Final = hdrs.SET_COOKIE
_TRANSFER_ENCODING: Final = hdrs.TRANSFER_ENCODING
_VARY: Final = hdrs.VARY
_X_FORWARDED_FOR: Final = hdrs.X_FORWARDED_FOR
_X_FORWARDED_PROTO: Final = hdrs.X_FORWARDED_PROTO

log = logging.getLogger("proxy.handler")

# The status a request cut at shutdown is counted and logged with.
_CUT_AT_SHUTDOWN: Final = 503
TOKEN_COOKIE: Final = "cc_user_token"  # noqa: S105 -- a cookie name, not a secret
USER_ID_HEADER: Final = "X-CC-User-Id"
USER_TOKEN_HEADER: Final = "X-CC-User-Token"  # noqa: S105 -- a header name
REQUEST_ID_HEADER: Final = "X-Request-Id"
# Raw customer ids whose checks passed, kept so a returning customer's id is not checked again.
_REMEMBERED_IDS: Final = 4096
NO_SHARED_CACHE: Final = "private, no-store"
# Client addresses remembered by ShopHandler._client before it starts afresh.
_CLIENTS_KEPT: Final = 4096
# Removed from every page that carries a token: an edge cache obeys these ahead of Cache-Control.
_SHARED_CACHE_HEADERS: Final = (
    _EXPIRES,
    "Surrogate-Control",
    "Surrogate-Key",
    "CDN-Cache-Control",
    "Cloudflare-CDN-Cache-Control",
)
# Validators of the shop's page: an editor page's GET goes out without them (its HTML is rewritten).
_VALIDATORS: Final = (_ETAG, _LAST_MODIFIED)
# Response headers that describe the shop's bytes; wrong once the body is changed.
_BODY_DESCRIPTORS: Final = (
    _CONTENT_LENGTH,
    _CONTENT_ENCODING,
    _ETAG,
    _LAST_MODIFIED,
    "Content-MD5",
)


@dataclass(slots=True)
class Storefront:
    """Everything one storefront needs per request, built once from its settings."""

    settings: StorefrontSettings
    upstream: Upstream
    trusted: TrustedNetworks
    guests: GuestRecogniser
    editor_paths: PathMatcher
    session_check: SessionChecker | None
    response_memory: ResponseHeaderMemory | None
    merged_sessions: MergedSessions
    upstream_latency: LatencyHistogram
    counters: StorefrontCounters
    payloads: PayloadMaker
    # Where the element went in this storefront's recent editor pages (their heads repeat).
    placements: Placements = field(default_factory=Placements)
    name: str = field(init=False)
    storefront_id: int = field(init=False)
    underscores_in_headers: bool = field(init=False)
    session_cookie: str | None = field(init=False)
    identity_header: str | None = field(init=False)
    strip_keys: frozenset[bytes] = field(init=False)
    identity_spelling: frozenset[bytes] = field(init=False)
    response_header: str | None = field(init=False)
    html: bool = field(init=False)
    script: bool = field(init=False)
    header: bool = field(init=False)
    cookie: bool = field(init=False)
    injects: bool = field(init=False)
    secure_cookies_always: bool = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.name = settings.name
        self.storefront_id = settings.storefront_id
        self.underscores_in_headers = settings.underscores_in_headers
        self.session_cookie = settings.session_cookie
        self.identity_header = settings.user.header
        header = settings.user.header
        self.strip_keys = frozenset({header_key(header).encode()} if header else ())
        # The spelling of it a trusted peer's copy goes on to the shop in (the one read here).
        self.identity_spelling = frozenset({header.lower().encode()} if header else ())
        self.response_header = settings.user.response_header
        self.html = settings.injects_html
        self.script = "script" in settings.inject
        self.header = "header" in settings.inject
        self.cookie = "cookie" in settings.inject
        self.injects = self.html or self.header or self.cookie
        self.secure_cookies_always = settings.secure_cookies == "always"


class StorefrontCounters:
    """One storefront's metric children, looked up once (``labels()`` is costly per request)."""

    __slots__ = ("cookie", "deferred_guests", "header", "html", "token_unavailable")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.html = metrics.injections.labels(name, "html")
        self.header = metrics.injections.labels(name, "header")
        self.cookie = metrics.injections.labels(name, "cookie")
        self.token_unavailable = metrics.token_unavailable.labels(name)
        self.deferred_guests = metrics.deferred_guests.labels(name)


def build_storefront(
    settings: StorefrontSettings,
    upstream: Upstream,
    keys: GuestKeys,
    metrics: Metrics,
    store: TokenStore,
    payloads: PayloadMaker,
    clock: Callable[[], float] = time.time,
) -> Storefront:
    """Compile one storefront's settings into what the request path reads."""
    check = settings.user.session_check
    return Storefront(
        settings=settings,
        upstream=upstream,
        trusted=TrustedNetworks(settings.trusted_networks),
        guests=GuestRecogniser(settings, keys),
        editor_paths=PathMatcher(settings.editor_paths),
        session_check=(
            SessionChecker(
                check,
                settings.upstream,
                upstream.session,
                settings.upstream_timeout_s,
                outcomes=metrics.session_checks,
                storefront=settings.name,
                own_cookies=(TOKEN_COOKIE, GUEST_COOKIE),
                clock=clock,
            )
            if check
            else None
        ),
        response_memory=ResponseHeaderMemory(store) if settings.user.response_header else None,
        merged_sessions=MergedSessions(store),
        upstream_latency=metrics.upstream_seconds.labels(settings.name),
        counters=StorefrontCounters(metrics, settings.name),
        payloads=payloads,
    )


@dataclass(slots=True)
class Attachment:
    """What the token work of one request produced for its response."""

    token: CustomerToken | None = None
    # A guest whose request carried no cookie: their id, with no StorefrontUser and no token yet.
    deferred_guest: str | None = None
    # Over budget (a new user or merge held back): seconds until the client may try again.
    over_budget_s: float | None = None
    set_cookies: list[str] = field(default_factory=list)


class ShopHandler:
    """Serves every request of the shop listener."""

    def __init__(
        self,
        router: Router[Storefront],
        tokens: TokenService,
        metrics: Metrics,
        *,
        api_timeout_s: float,
        retry_after_s: int,
        clock: Callable[[], float] = time.time,
        access_log: AccessLog | None = None,
        budget: Budget | None = None,
        buffering: Buffering,
        client_gate: ClientGate | None = None,
    ) -> None:
        self._router = router
        self._budget = budget
        self._gate = client_gate
        # Client addresses as the budget names them, by storefront and peer (see _client).
        self._clients: dict[tuple[str, str | None], str] = {}
        self._buffering = buffering
        self._requests = metrics.requests
        self._valid_ids: dict[str, str] = {}
        self._access_log = access_log
        self._tokens = tokens
        self._metrics = metrics
        self._api_timeout_s = api_timeout_s
        self._clock = clock
        self._sidecar_paths = sidecar_paths(self, retry_after_s=retry_after_s)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one shop request: the one place errors become HTTP responses, counted and logged."""
        # The request line and headers are read from here on, not through the request's cached
        # properties (see parsed_head).
        message = parsed_head(request)
        path = decoded_path(request, message)
        remote = request.remote
        context = RequestContext(message.headers.get(REQUEST_ID_HEADER))
        # Every log line written for this request carries its id (and storefront, once routed).
        request_context.set(context)
        started = time.perf_counter()
        try:
            response = await self._serve(request, message, path, remote, context)
        except ClientGone as exc:
            # A visitor who cancels a download does this: one INFO line, no traceback, no 500.
            log.info("client went away %s", exc, extra={"path": path, "status": exc.status})
            response = CLIENT_GONE
        except BodyRefused as exc:
            log.info("refused a request body: %s", exc, extra={"status": exc.status})
            response = await _refuse_body(request, exc)
        except ClientBusy as exc:
            # Once a minute at most (the repeated-warning filter): a flood would be a line a page.
            log.warning("refused a page of a client with too many at once: %s", exc)
            response = web.Response(
                status=exc.status,
                text=exc.text,
                headers={_RETRY_AFTER: str(exc.retry_after_s), _CACHE_CONTROL: "no-store"},
            )
        except UpstreamError as exc:
            log.warning("shop request failed: %s", exc, extra={"status": exc.status})
            response = web.Response(status=exc.status, text=_UPSTREAM_TEXT[exc.status])
        except web.HTTPException as exc:
            # aiohttp answers these itself once re-raised.
            self._record(message.method, path, remote, context, exc.status, started)
            raise
        except asyncio.CancelledError:
            # Cut at shutdown, the grace over (aiohttp cancels no handler otherwise): its line is
            # written all the same, as a 503 (the sidecar stopped serving it).
            self._record(message.method, path, remote, context, _CUT_AT_SHUTDOWN, started)
            raise
        except SidecarError as exc:
            log.error("request failed: %s", exc)
            response = web.Response(status=500, text="internal error\n")
        except Exception:
            log.exception("unexpected error")
            response = web.Response(status=500, text="internal error\n")
        self._record(message.method, path, remote, context, response.status, started)
        return response

    def record_refused(self, status: int, remote: str | None) -> None:
        """Count and log a request aiohttp answered itself (its parser refused it, or its head was
        over the limit): method and path ``-``, as nginx logs a request line it could not read."""
        self._record("-", "-", remote, RequestContext(), status, time.perf_counter())

    def _record(
        self, method: str, path: str, remote: str | None, context: RequestContext, status: int, started: float
    ) -> None:
        """Count the request and write its access log line."""
        self._requests.labels(context.storefront or "-", status).inc()
        access_log = self._access_log
        if access_log is not None:
            access_log.record(
                context.request_id,
                context.storefront,
                method,
                path,
                status,
                time.perf_counter() - started,
                remote,
            )

    async def _serve(
        self, request: web.BaseRequest, message: Any, path: str, remote: str | None, context: RequestContext
    ) -> web.StreamResponse:
        """Route, identify, forward and attach: one request end to end.

        ``message`` is the request's parsed head (:func:`~proxy.client_response.parsed_head`),
        ``path`` its decoded path (``request.path``) and ``remote`` its peer.
        """
        if type(request) is UnsupportedVersionRequest:
            return _refused(505, "only HTTP/1.0 and HTTP/1.1 are served here\n")
        method: str = message.method
        client_headers: CIMultiDictProxy[str] = message.headers
        if method in _REFUSED_METHODS:
            # CONNECT: a tunnel would carry bytes the sidecar never frames or checks. TRACE: the
            # shop would echo the request's headers (cookies included) to the page (nginx: 405).
            return _refused(405, f"{method} is not served here\n")
        transfer_encoding = client_headers.get(_TRANSFER_ENCODING)
        if transfer_encoding is not None and transfer_encoding.strip().lower() != "chunked":
            # aiohttp takes "gzip, chunked" and removes only the chunking: the shop would get a
            # gzip body labelled as nothing (nginx: 501).
            return _refused(501, "only the chunked transfer coding is served here\n")
        # What the request names, judged strictly: the shop gets the host that was matched and
        # the target in origin form, never a spelling it could read differently.
        target: str = message.path
        authority = client_headers.get(_HOST)
        if "#" in target:
            # A fragment never belongs in a request (RFC 9112 3.2); servers disagree on it.
            return _refused(400, "bad request target\n")
        if not target.startswith("/"):
            origin = origin_form(target)
            if origin is None or (origin.target == "*" and method != hdrs.METH_OPTIONS):
                return _refused(400, "bad request target\n")
            target = origin.target
            if origin.authority is not None:
                # RFC 9112 3.2.2: an absolute-form target's host wins over the Host header.
                authority = origin.authority
        host = None
        if authority is not None:
            host = parse_host(authority)
            if host is None:
                return _refused(400, "bad Host header\n")
        storefront = self._router.resolve(host.name if host is not None else None, client_headers, remote)
        if storefront is None:
            return web.Response(status=421, text="no storefront is configured for this host\n")
        context.storefront = storefront.name
        if _EXPECT in client_headers:
            # A body announced too large is refused before the client is asked to send it.
            self._buffering.check_announced(request)
            refused = await _answer_expect(request)
            if refused is not None:
                return refused
        trusted = storefront.trusted.contains(remote)
        if "\x00" in path:
            # Servers disagree on a NUL (some end the path there): no shop path has one.
            return _refused(400, "bad path\n")
        # No spelling of /.cc-sidecar/ that any server could route there is forwarded.
        lenient = normalise_path(path)
        if lenient is None:
            return _refused(400, "bad path\n")
        if is_sidecar_path(lenient):
            sidecar_request = SidecarRequest(
                request, storefront, trusted, host.authority if host is not None else None
            )
            client = await self._enter_gate(request, storefront, trusted)
            try:
                return await self._sidecar_paths.answer(sidecar_request)
            finally:
                if client is not None:
                    self._gate_leave(client)

        # An editor page is a path every server reads alike (servers disagree on "/a/..",
        # "/a;b", "/a.", "%2f", or "%25", which some decode twice), so a token never goes with
        # a page the shop routes elsewhere.
        editor_path = (
            storefront.injects
            and (method == hdrs.METH_GET or method == hdrs.METH_HEAD)
            and lenient == path
            and "%" not in path
            and storefront.editor_paths.matches(path)
            and not has_encoded_separator(target)
        )
        editor = editor_path and method == hdrs.METH_GET
        # Another site's page asking for an editor page (a fetch, an iframe): no token for it.
        withheld = editor and not page_may_carry_token(client_headers)
        upstream_headers = storefront.upstream.request_headers(
            message,
            remote,
            trusted=trusted,
            host=host.authority if host is not None else None,
            target=target,
            drop=storefront.strip_keys,
            plain=storefront.identity_spelling,
            drop_conditional=editor,
            # The browser's copy of the token never goes upstream.
            drop_cookie=TOKEN_COOKIE,
            underscores=storefront.underscores_in_headers,
        )
        if is_websocket_upgrade(client_headers):
            if (
                method != hdrs.METH_GET
                or _CONTENT_LENGTH in client_headers
                or _TRANSFER_ENCODING in client_headers
            ):
                # A handshake is a GET without a body (RFC 6455 4.1): a body announced would
                # be framing the sidecar never relays, and the shop's handshake is made as a GET.
                return _refused(400, "a WebSocket handshake is a GET without a body\n")
            return await storefront.upstream.websocket(request, upstream_headers)

        # One client's editor pages a few at a time, from here to their response head
        # (proxy.client_gate): a flood of them cannot hold up other customers' pages. Before the
        # body is read, so a page waiting for its turn holds no temp space.
        gated = await self._enter_gate(request, storefront, trusted) if editor else None
        body = None
        # From here the client's turn, and the body (and its share of the temp space), go back
        # however the request ends: the shop may answer before it has read it all.
        try:
            # The whole body first (unless it streams): a slow client never holds a shop worker.
            has_body = request.body_exists
            if has_body and not self._buffering.streams(path):
                body = await self._buffering.read_body(request)
            logged_in = self._header_identity(client_headers, storefront, trusted)
            work: asyncio.Task[Attachment] | None = None
            token: CustomerToken | None = None
            deferred_guest: str | None = None
            over_budget = False
            if storefront.response_header is None:
                if editor and not withheld:
                    token = self._cached_token(request, storefront, logged_in)
                    if token is None:
                        work = self._start_attachment(
                            request, storefront, logged_in, trusted, upstream_headers, want_token=True
                        )
                elif (logged_in or storefront.session_check) and GUEST_COOKIE in _cookies(request):
                    work = self._start_attachment(
                        request, storefront, logged_in, trusted, upstream_headers, want_token=False
                    )

            try:
                started = time.perf_counter()
                shop = await storefront.upstream.open(
                    upstream_headers, body if body is not None else request.content if has_body else None
                )
                storefront.upstream_latency.observe(time.perf_counter() - started)
            except BaseException:
                if work is not None:
                    work.cancel()
                raise

            headers = response_headers(shop)
            # A response that replaces or deletes the shop's session (a login, a logout) ends what
            # was learnt about the old one: whoever still holds it is nobody now.
            new_session: CookieSet | None = None
            if storefront.session_cookie is not None and (
                storefront.response_memory is not None or storefront.session_check is not None
            ):
                new_session = await self._session_replaced(request, storefront, headers)
            # Cookie mode: the token cookie goes with the shop's session (a logout, a login that
            # rotates it), so no page reads the old customer's token after it.
            token_cookie_ends = (
                storefront.cookie
                and storefront.session_cookie is not None
                and _SET_COOKIE in headers
                and replaces_session(
                    headers.getall(_SET_COOKIE),
                    storefront.session_cookie,
                    storefront.guests.session_value(_cookies(request)),
                    self._clock(),
                )
            )
            if storefront.response_header is not None:
                named = await self._response_identity(request, storefront, headers, shop.status, new_session)
                logged_in = logged_in or named
                if (editor and not withheld) or (
                    (logged_in or storefront.session_check) and GUEST_COOKIE in _cookies(request)
                ):
                    work = self._start_attachment(
                        request,
                        storefront,
                        logged_in,
                        trusted,
                        upstream_headers,
                        want_token=editor and not withheld,
                    )

            if work is not None:
                if editor and shop.status != 200:
                    work.cancel()
                else:
                    attachment = await work
                    token = attachment.token
                    deferred_guest = attachment.deferred_guest
                    over_budget = attachment.over_budget_s is not None
                    for cookie in attachment.set_cookies:
                        headers.add(_SET_COOKIE, cookie)
            # An editor page's token came from the cache or from the work just awaited (None: unavailable,
            # or a cookie-less guest's whose StorefrontUser waits for the cookie to come back).
            body_filter: BodyFilter | None = None
            if withheld and shop.status == 200:
                _keep_private(headers)
                headers[STATUS_HEADER] = "token-withheld"
            elif editor and shop.status == 200:
                body_filter = self._attach(
                    request,
                    trusted,
                    storefront,
                    headers,
                    token,
                    deferred_guest,
                    over_budget=over_budget,
                    token_cookie=not token_cookie_ends,
                )
            elif editor_path and shop.status == 200:
                # HEAD of an editor page: no token, but the headers a cache would refresh its GET with
                # say what the GET's say (private, no validators).
                _keep_private(headers)
                for name in _VALIDATORS:
                    headers.popall(name, None)
            if token_cookie_ends:
                headers.add(
                    _SET_COOKIE,
                    delete_cookie_value(
                        TOKEN_COOKIE, http_only=False, secure=_secure_cookies(request, storefront)
                    ),
                )
            if gated is not None:
                # The page's work is done: its body goes to the client at the client's pace, and the
                # client's next page need not wait for that.
                self._gate_leave(gated)
                gated = None
            return await storefront.upstream.relay(request, shop, headers, body_filter, self._buffering)
        finally:
            if gated is not None:
                self._gate_leave(gated)
            if body is not None:
                body.close()

    async def _enter_gate(
        self, request: web.BaseRequest, storefront: Storefront, trusted: bool
    ) -> str | None:
        """Wait for the client's turn (:class:`~proxy.errors.ClientBusy` past the wait); the client
        to :meth:`_gate_leave` with, or None without a gate. A client gone meanwhile is ClientGone."""
        gate = self._gate
        if gate is None:
            return None
        client = self._client(request, storefront, trusted)
        if not gate.try_enter(client):
            await gate.enter(client)
        transport = request.transport
        if transport is None or transport.is_closing():
            # Nobody to answer: no shop request, no token work for it.
            gate.leave(client)
            raise ClientGone("while it waited for its turn")
        return client

    def _gate_leave(self, client: str) -> None:
        assert self._gate is not None
        self._gate.leave(client)

    def _client(self, request: web.BaseRequest, storefront: Storefront, trusted: bool) -> str:
        """The client as the budget names it (:func:`proxy.budget.client_address`).

        Remembered by peer when X-Forwarded-For does not count (an untrusted peer, or none sent);
        a trusted hop's X-Forwarded-For is read each time, as a key of it would be the client's to
        choose (and to grow without bound).
        """
        if trusted:
            forwarded_for = request.headers.getall(_X_FORWARDED_FOR, ())
            if forwarded_for:
                return client_address(request.remote, forwarded_for, storefront.trusted)
        key = (storefront.name, request.remote)
        client = self._clients.get(key)
        if client is None:
            if len(self._clients) >= _CLIENTS_KEPT:
                self._clients.clear()
            client = client_address(request.remote, (), storefront.trusted)
            self._clients[key] = client
        return client

    def _start_attachment(
        self,
        request: web.BaseRequest,
        storefront: Storefront,
        logged_in: str | None,
        trusted: bool,
        page_headers: OutgoingHeaders,
        *,
        want_token: bool,
    ) -> asyncio.Task[Attachment]:
        """Start the customer's token work (and a merge at login) beside the shop's response."""
        return asyncio.create_task(
            self._attachment(
                request,
                storefront,
                logged_in,
                _secure_cookies(request, storefront),
                page_headers,
                want_token=want_token,
            )
        )

    def _cached_token(
        self, request: web.BaseRequest, storefront: Storefront, logged_in: str | None
    ) -> CustomerToken | None:
        """The cached token of a known customer, counted as a hit: no task, no I/O.

        None whenever the slow path has something to do: a session check, a merge at login,
        a guest cookie to set, or a token to fetch.
        """
        cookies = _cookies(request)
        if logged_in is not None:
            if GUEST_COOKIE in cookies:
                return None
            return self._tokens.cached_hit(storefront.storefront_id, logged_in, is_anonymous=False)
        if storefront.session_check is None:
            guest_id = storefront.guests.cookie_guest(cookies)
            if guest_id is not None:
                return self._tokens.cached_hit(storefront.storefront_id, guest_id, is_anonymous=True)
        return None

    def _header_identity(
        self, headers: CIMultiDictProxy[str], storefront: Storefront, trusted: bool
    ) -> str | None:
        """The logged-in id from the request's identity header, believed only from a trusted peer."""
        if storefront.identity_header is None or not trusted:
            return None
        raw = header_value(headers, storefront.identity_header)
        if raw is None:
            return None
        return self._valid_or_none(raw, storefront, "header")

    async def _session_replaced(
        self, request: web.BaseRequest, storefront: Storefront, headers: CIMultiDict[str]
    ) -> CookieSet | None:
        """If the response sets the shop's session cookie to a new value or deletes it, forget the old.

        Returns what it was set to (None: the session was left alone). Without this a session id
        planted before a login (fixation) or kept after a logout would go on naming the customer.
        """
        assert storefront.session_cookie is not None
        set_cookies = headers.getall(_SET_COOKIE, ())
        if not set_cookies:
            return None
        change = cookie_set(set_cookies, storefront.session_cookie, self._clock())
        if change is None:
            return None
        cookies = _cookies(request)
        if change.value is not None and change.value == storefront.guests.session_value(cookies):
            return None  # the same session, its cookie renewed
        old_key = storefront.guests.session_key(cookies)
        if old_key is not None:
            if storefront.session_check is not None:
                storefront.session_check.forget(old_key)
            if storefront.response_memory is not None:
                await storefront.response_memory.forget(old_key)
        return change

    async def _response_identity(
        self,
        request: web.BaseRequest,
        storefront: Storefront,
        headers: CIMultiDict[str],
        status: int,
        new_session: CookieSet | None,
    ) -> str | None:
        """The id the shop named on its response (the header is removed before the client sees it).

        Remembered for the session the browser holds after this response: the one the response
        set, if it set one (a login rotates it). A page the shop served without naming anyone
        ends what was remembered for the session (a logout), so the token endpoint stops
        answering for that customer.
        """
        assert storefront.response_header is not None
        values = headers.popall(storefront.response_header, ())
        named = self._valid_or_none(values[0], storefront, "response_header") if len(values) == 1 else None
        memory = storefront.response_memory
        session_key: str | None = None
        if memory is not None:
            if new_session is None:
                session_key = storefront.guests.session_key(_cookies(request))
            elif new_session.value is not None:
                session_key = storefront.guests.key_of(new_session.value)
        if memory is not None and session_key is not None:
            if named is not None:
                await memory.remember(session_key, named)
            elif 200 <= status < 300 and is_html(headers.get(_CONTENT_TYPE)):
                await memory.forget(session_key)
        return named

    def _valid_or_none(self, raw: str, storefront: Storefront, source: str) -> str | None:
        valid = self._valid_ids.get(raw)
        if valid is not None:
            return valid
        try:
            valid = valid_customer_id(raw)
        except InvalidIdentity as exc:
            self._metrics.invalid_identities.labels(storefront.name, source).inc()
            log.warning("ignored an invalid customer id: %s", exc, extra={"source": source})
            return None
        # The same customers come back page after page; an invalid id is judged (and logged) anew.
        if len(self._valid_ids) >= _REMEMBERED_IDS:
            self._valid_ids.clear()
        self._valid_ids[raw] = valid
        return valid

    async def _attachment(
        self,
        request: web.BaseRequest,
        storefront: Storefront,
        logged_in: str | None,
        secure: bool,
        page_headers: OutgoingHeaders | None,
        *,
        want_token: bool,
        remembered: str | None = None,
        newer_when_due: bool = False,
    ) -> Attachment:
        """Resolve the customer, merge a guest at login, and get the token, within the API timeout.

        ``page_headers`` are the request's headers as they go (or would go) upstream: the
        session check carries them.
        """
        attachment = Attachment()
        try:
            async with asyncio.timeout(self._api_timeout_s):
                await self._resolve(
                    request,
                    storefront,
                    logged_in or remembered,
                    secure,
                    page_headers,
                    attachment,
                    want_token,
                    newer_when_due,
                )
        except TimeoutError:
            log.warning("token work timed out", extra={"timeout_s": self._api_timeout_s})
        except Exception:
            # Whatever broke, the shop's page still goes out (marked token-unavailable).
            log.exception("token work failed unexpectedly")
        return attachment

    async def _resolve(
        self,
        request: web.BaseRequest,
        storefront: Storefront,
        logged_in: str | None,
        secure: bool,
        page_headers: OutgoingHeaders | None,
        attachment: Attachment,
        want_token: bool,
        newer_when_due: bool,
    ) -> None:
        cookies = _cookies(request)
        guests = storefront.guests
        if logged_in is None and storefront.session_check is not None and page_headers is not None:
            session_key = guests.session_key(cookies)
            if session_key is not None:
                logged_in = await storefront.session_check.customer_id(session_key, page_headers)
        guest_id: str | None = None
        first_visit = False
        if logged_in is not None:
            customer = Customer(storefront.storefront_id, logged_in, is_anonymous=False)
            cookie_guest = guests.cookie_guest(cookies)
            if cookie_guest is not None:
                session = session_of(storefront.storefront_id, guests.session_key(cookies), logged_in)
                if await storefront.merged_sessions.admit(session, cookie_guest):
                    outcome = await self._tokens.merge_guest(
                        storefront.storefront_id,
                        cookie_guest,
                        logged_in,
                        storefront_name=storefront.settings.name,
                        charge=self._charge(request, storefront),
                    )
                else:
                    # A second guest in a session that merged one: only tampering brings it.
                    outcome = MergeOutcome.SECOND_GUEST
                    self._tokens.count_merge(storefront.settings.name, outcome)
                    log.info("cleared a second guest cookie of a logged-in session without a merge")
                if not outcome.settled:
                    await storefront.merged_sessions.failed(session)
                else:
                    attachment.set_cookies.append(
                        delete_cookie_value(GUEST_COOKIE, http_only=True, secure=secure)
                    )
            elif cookies.only(GUEST_COOKIE) is not None:
                # A guest cookie that fails its signature names nobody: drop it. One sent twice
                # stays: the deletion would reach the browser's own (host-only) and leave the
                # other (planted for the parent domain, say) alone, then believed.
                attachment.set_cookies.append(
                    delete_cookie_value(GUEST_COOKIE, http_only=True, secure=secure)
                )
        else:
            guest = guests.guest(cookies)
            guest_id = guest.user_id
            first_visit = guest.minted
            customer = Customer(storefront.storefront_id, guest_id, is_anonymous=True)
        if not want_token:
            return
        if first_visit and guest_id is not None:
            # Neither the shop's session cookie nor a valid guest cookie, whatever other cookies
            # came (a first visit, a crawler, a client making cookies up): the guest id and cookie
            # but no StorefrontUser. The request that brings the cookie back (the page script's
            # call to tokenUrl) makes one (contract, "Identity").
            attachment.deferred_guest = guest_id
            attachment.set_cookies.append(_guest_cookie(guests, guest_id, secure))
            storefront.counters.deferred_guests.inc()
            return
        try:
            attachment.token = await self._tokens.token_for(
                customer, self._charge(request, storefront), newer_when_due=newer_when_due
            )
        except OverBudget as exc:
            attachment.over_budget_s = exc.retry_after_s
            return
        except CircuitOpen:
            # The breaker logged the outage when it began and logs it when it ends, with the
            # count of pages like this one: a line per page would flood the log.
            return
        except StorefrontApiError as exc:
            log.warning("no customer token: %s", exc, extra={"error": type(exc).__name__})
            return
        if guest_id is not None:
            # Set (or renewed, once per token fetched) only on a response that carries the
            # token (contract), so it names a user that exists.
            attachment.set_cookies.append(_guest_cookie(guests, guest_id, secure))

    def _charge(self, request: web.BaseRequest, storefront: Storefront) -> Charge | None:
        """What charges a new user or merge of this request to its client and storefront."""
        budget = self._budget
        if budget is None:
            return None

        async def charge() -> None:
            forwarded_for = request.headers.getall(_X_FORWARDED_FOR, ())
            client = client_address(request.remote, forwarded_for, storefront.trusted)
            await budget.charge(storefront.name, client)

        return charge

    def _attach(
        self,
        request: web.BaseRequest,
        trusted: bool,
        storefront: Storefront,
        headers: CIMultiDict[str],
        token: CustomerToken | None,
        deferred_guest: str | None = None,
        *,
        over_budget: bool = False,
        token_cookie: bool = True,
    ) -> BodyFilter | None:
        """Put the token on an editor page's response; returns the HTML body filter, if any.

        A deferred guest (no token yet) gets the element with a null token and the id header.
        """
        _keep_private(headers)
        if token is not None or deferred_guest is not None:
            # Whatever the shop allows, no other origin reads a customer's identity.
            strip_cors(headers)
        if token is None:
            if deferred_guest is not None:
                return self._attach_deferred(request, storefront, headers, deferred_guest)
            if over_budget:
                # The budget counted it; the page script asks tokenUrl, which says when to retry.
                headers[STATUS_HEADER] = "token-deferred"
                return None
            headers[STATUS_HEADER] = "token-unavailable"
            storefront.counters.token_unavailable.inc()
            if storefront.script and is_html(headers.get(_CONTENT_TYPE)):
                # No element, but the page script, which asks tokenUrl until Customer's Canvas is back:
                # the page's one line still finds ccSidecar.
                return self._html_filter(request, storefront, headers, self._page_script_tag(headers))
            return None
        body_filter: BodyFilter | None = None
        if storefront.html and is_html(headers.get(_CONTENT_TYPE)):
            element = storefront.payloads.element(token)
            if storefront.script:
                element += self._page_script_tag(headers)
            body_filter = self._html_filter(request, storefront, headers, element)
            if body_filter is not None:
                storefront.counters.html.inc()
        if storefront.header:
            headers[USER_ID_HEADER] = token.user_id
            headers[USER_TOKEN_HEADER] = token.token
            storefront.counters.header.inc()
        if storefront.cookie and token_cookie:
            max_age = max(0, token.expires_at - int(self._clock()))
            headers.add(
                _SET_COOKIE,
                set_cookie_value(
                    TOKEN_COOKIE,
                    token.token,
                    http_only=False,
                    secure=_secure_cookies(request, storefront),
                    max_age=max_age,
                ),
            )
            storefront.counters.cookie.inc()
        return body_filter

    @staticmethod
    def _page_script_tag(headers: CIMultiDict[str]) -> bytes:
        """The page script's tag, carrying the nonce of the page's own CSP when it has one."""
        nonce = script_nonce(headers.getall(CSP_HEADER, ()))
        if nonce is None:
            # A policy only reported, not enforced, would still report the tag without its nonce.
            nonce = script_nonce(headers.getall(CSP_REPORT_ONLY_HEADER, ()))
        return script_tag(nonce)

    def _html_filter(
        self, request: web.BaseRequest, storefront: Storefront, headers: CIMultiDict[str], element: bytes
    ) -> BodyFilter | None:
        """The filter that puts ``element`` into an HTML page, its headers made to match.

        None (the page goes out as it is) when the shop encoded it in a way the sidecar cannot undo.
        """
        encoding = headers.get(_CONTENT_ENCODING)
        if encoding is not None and not ContentDecoder.supports(encoding):
            log.warning("editor page has an encoding the sidecar cannot decode", extra={"encoding": encoding})
            return None
        for name in _BODY_DESCRIPTORS:
            headers.popall(name, None)
        if encoding is None:
            return _TokenElementFilter(element, storefront.placements, None)
        return _TokenElementFilter(
            element,
            storefront.placements,
            ContentDecoder(encoding),
            _encoder_for(request, encoding, headers),
        )

    def _attach_deferred(
        self, request: web.BaseRequest, storefront: Storefront, headers: CIMultiDict[str], guest_id: str
    ) -> BodyFilter | None:
        """The guest id without a token: the element (null token), X-CC-User-Id; no token cookie.

        A token cookie the browser still sends is someone else's (a new guest has no token yet:
        the customer who logged out on this browser): it is deleted, so no page script reads it.
        """
        body_filter: BodyFilter | None = None
        if storefront.html and is_html(headers.get(_CONTENT_TYPE)):
            element = render_element(storefront.payloads.for_deferred_guest(guest_id))
            if storefront.script:
                element += self._page_script_tag(headers)
            body_filter = self._html_filter(request, storefront, headers, element)
        if storefront.header:
            headers[USER_ID_HEADER] = guest_id
        if storefront.cookie and TOKEN_COOKIE in _cookies(request):
            secure = _secure_cookies(request, storefront)
            headers.add(_SET_COOKIE, delete_cookie_value(TOKEN_COOKIE, http_only=False, secure=secure))
        return body_filter

    async def token_endpoint_attachment(self, sidecar_request: SidecarRequest) -> Attachment:
        """The token endpoint's customer and token, found as for a page (see :mod:`proxy.sidecar_paths`).

        The token is a newer one once the current is past its renewal point: the page was
        told (``renewIn``) that from then on this answers with one.
        """
        request, storefront, trusted = (
            sidecar_request.request,
            sidecar_request.storefront,
            sidecar_request.trusted,
        )
        logged_in = self._header_identity(request.headers, storefront, trusted)
        remembered = None
        if logged_in is None and storefront.response_memory is not None:
            session_key = storefront.guests.session_key(_cookies(request))
            remembered = await storefront.response_memory.recall(session_key) if session_key else None
        # The session check asks the shop about this browser as a page request of it would.
        page_headers = (
            storefront.upstream.request_headers(
                parsed_head(request),
                request.remote,
                trusted=trusted,
                host=sidecar_request.host,
                target=request.raw_path,
                drop=storefront.strip_keys,
                plain=storefront.identity_spelling,
                drop_cookie=TOKEN_COOKIE,
                underscores=storefront.underscores_in_headers,
            )
            if storefront.session_check is not None
            else None
        )
        return await self._attachment(
            request,
            storefront,
            logged_in,
            _secure_cookies(request, storefront),
            page_headers,
            want_token=True,
            remembered=remembered,
            newer_when_due=True,
        )


class _TokenElementFilter:
    """Puts the token element into an editor page: the shop's coding undone, and redone if accepted.

    A page the shop compressed is decoded for the injector and, when the client accepts a coding,
    compressed again with the element kept apart (see :class:`ContentEncoder`). Most shops send
    editor pages unencoded, and most pages are all here at the first read: then there is nothing
    to decode or encode and no streaming injector to set up (:meth:`whole`).
    """

    __slots__ = ("_decoder", "_element", "_encoder", "_injector", "_placements")

    def __init__(
        self,
        element: bytes,
        placements: Placements,
        decoder: ContentDecoder | None,
        encoder: ContentEncoder | None = None,
    ) -> None:
        self._element = element
        self._placements = placements
        self._decoder = decoder
        self._encoder = encoder
        self._injector: HtmlInjector | None = None

    def whole(self, body: bytes) -> bytes:
        if self._decoder is not None:
            body = self._decoder.feed(body) + self._decoder.finish()
        body, element_at = inject_html_at(body, self._element, self._placements)
        if self._encoder is None:
            return body
        return self._encoder.whole(body, element_at)

    def feed(self, chunk: bytes) -> bytes:
        if self._decoder is not None:
            chunk = self._decoder.feed(chunk)
        injector = self._streaming()
        if self._encoder is None:
            return injector.feed(chunk)
        was_in = injector.injected
        chunk = injector.feed(chunk)
        return self._encoder.feed(chunk, None if was_in else injector.element_at)

    def finish(self) -> bytes:
        injector = self._streaming()
        was_in = injector.injected
        if self._decoder is None:
            rest = injector.finish()
        else:
            rest = injector.feed(self._decoder.finish()) + injector.finish()
        if self._encoder is None:
            return rest
        # The injector says where it put the element (not a search, which a page that echoes
        # the element's text ahead of it could mislead), for the encoder to keep it apart.
        return self._encoder.feed(rest, None if was_in else injector.element_at) + self._encoder.finish()

    def _streaming(self) -> HtmlInjector:
        """The streaming injector, made on first use (a page that is all here never needs one)."""
        if self._injector is None:
            self._injector = HtmlInjector(self._element)
        return self._injector


def _encoder_for(request: web.BaseRequest, encoding: str, headers: CIMultiDict[str]) -> ContentEncoder | None:
    """How a page the shop sent encoded goes back out, its headers set to match.

    Compressed again when the client accepts a coding (:func:`response_coding`), so an editor
    page costs the wire what the shop meant it to. Which one depends on the request's
    Accept-Encoding, so the response varies on it whatever the shop's Vary said.
    """
    vary = headers.getall(_VARY, ())
    names = {name.strip().lower() for value in vary for name in value.split(",")}
    if not names & {"accept-encoding", "*"}:
        headers[_VARY] = ", ".join((*vary, "Accept-Encoding"))
    coding = response_coding(encoding, request.headers.get(_ACCEPT_ENCODING))
    if coding is None:
        return None
    headers[_CONTENT_ENCODING] = coding
    return ContentEncoder(coding)


_UPSTREAM_TEXT: Final = {
    502: "bad gateway: the shop did not answer\n",
    504: "gateway timeout: the shop was too slow\n",
}


def _guest_cookie(guests: GuestRecogniser, guest_id: str, secure: bool) -> str:
    """The Set-Cookie value that keeps ``guest_id`` in the browser (signed, HttpOnly, 30 days)."""
    return set_cookie_value(
        GUEST_COOKIE, guests.signed(guest_id), http_only=True, secure=secure, max_age=GUEST_COOKIE_MAX_AGE_S
    )


def _keep_private(headers: CIMultiDict[str]) -> None:
    """Mark an editor page's response for the browser alone: no shared cache keeps it for another."""
    headers[_CACHE_CONTROL] = NO_SHARED_CACHE
    for name in _SHARED_CACHE_HEADERS:
        headers.popall(name, None)


def _refused(status: int, text: str) -> web.Response:
    """A request the sidecar will not forward; the connection closes, as its framing is suspect."""
    response = web.Response(status=status, text=text)
    response.force_close()
    return response


async def _refuse_body(request: web.BaseRequest, exc: BodyRefused) -> web.StreamResponse:
    """The answer to a refused body; the connection closes.

    A body too large, or one the temp files have no room for (503 with Retry-After), that the
    client is sending is answered as any refusal: aiohttp then reads and drops what still comes
    for a while (a lingering close), so the client reads the 413 or 503 rather than a reset. A
    body that stopped coming, or that the client waits to be asked for (``Expect:
    100-continue``), has nothing to linger for: written here, the connection closed.
    """
    if isinstance(exc, (BodyTooLarge, TempSpaceFull)) and _EXPECT not in request.headers:
        refused = _refused(exc.status, exc.text)
        if exc.retry_after_s is not None:
            refused.headers[_RETRY_AFTER] = str(exc.retry_after_s)
        return refused
    headers = CIMultiDict({_CONTENT_TYPE: "text/plain; charset=utf-8", _CONNECTION: "close"})
    if exc.retry_after_s is not None:
        headers[_RETRY_AFTER] = str(exc.retry_after_s)
    try:
        response = await write_whole(
            request, exc.status, HTTPStatus(exc.status).phrase, headers, exc.text.encode()
        )
    except ClientGone:
        response = CLIENT_GONE
    request.protocol.force_close()
    return response


_HTTP_1X: Final = frozenset((HttpVersion10, HttpVersion11))
_REFUSED_METHODS: Final = frozenset((hdrs.METH_CONNECT, hdrs.METH_TRACE))


class UnsupportedVersionRequest(web.BaseRequest):
    """A request in an HTTP version other than 1.0 and 1.1 (aiohttp takes 0.9 and 2.0): answered 505."""


def shop_request(
    # aiohttp's RawRequestMessage: its C parser's own type, not the NamedTuple its stubs name, so
    # typed loosely; compiled (mypyc) code would check it as a tuple.
    message: Any,
    payload: StreamReader,
    protocol: RequestHandler,
    writer: AbstractStreamWriter,
    task: asyncio.Task[None],
) -> web.BaseRequest:
    """The shop listener's request factory (aiohttp's own, but for the HTTP version).

    aiohttp answers in the request's version: a 505 to ``HTTP/2.0`` would start ``HTTP/2.0 505``,
    which no HTTP/1.x client reads. Such a request is made an HTTP/1.1 one that closes, and
    marked by its type for the handler to refuse.
    """
    if message.version in _HTTP_1X:
        return web.BaseRequest(message, payload, protocol, writer, task, task.get_loop())
    message = message._replace(version=HttpVersion11, should_close=True)
    return UnsupportedVersionRequest(message, payload, protocol, writer, task, task.get_loop())


async def _answer_expect(request: web.BaseRequest) -> web.Response | None:
    """Answer ``Expect: 100-continue`` (the client then sends its body); 417 for any other Expect.

    The header is per hop and never forwarded, so the shop cannot answer it: the sidecar does,
    as an aiohttp Application would. Over HTTP/1.0 it means nothing and is ignored.
    """
    if request.version != HttpVersion11:
        return None
    expect = request.headers.get(_EXPECT, "")
    if expect.lower() != "100-continue":
        return web.Response(status=417, text="unknown Expect\n")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # The interim answer is not part of the response's own bytes.
    request.writer.output_size = 0
    return None


def _cookies(request: web.BaseRequest) -> RequestCookies:
    """The request's cookies, each read by name on demand (aiohttp's ``request.cookies`` parses all).

    Several Cookie headers are read as one, as the shop will: a session cookie in a second one
    counts (twice is ambiguous, see :meth:`RequestCookies.only`).
    """
    headers = request.headers.getall(_COOKIE, ())
    if not headers:
        return RequestCookies("")
    return RequestCookies(headers[0] if len(headers) == 1 else "; ".join(headers))


def _secure_cookies(request: web.BaseRequest, storefront: Storefront) -> bool:
    """Whether the sidecar's cookies on this response are Secure (``secure_cookies``).

    The shop listener itself never terminates TLS (the ingress does): ``auto`` believes any hop's
    X-Forwarded-Proto or Forwarded, since that only makes the cookie stricter.
    """
    if storefront.secure_cookies_always:
        return True
    headers = request.headers
    return over_https(headers.getall(_X_FORWARDED_PROTO, ()), headers.getall(_FORWARDED, ()))
