"""Forwarding to the shop: request headers in, response headers out, bodies streamed, WebSockets.

Nothing here knows about customers or tokens; the handler decides what to strip or add and hands
this module the header sets and an optional body filter.

A plain-http shop is reached through :mod:`proxy.upstream_http` (a pooled HTTP/1.1 client on
asyncio protocols and httptools: about a third less CPU per request than aiohttp's client);
https shops, WebSockets and the session check go through one aiohttp ``ClientSession`` per shop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.buffering import Buffering, ResponseFeed, Spool, to_client
from proxy.client_response import write_whole
from proxy.config import StorefrontSettings
from proxy.cookies import cookie_header_without
from proxy.errors import ClientGone, UpstreamTimeout, UpstreamUnreachable
from proxy.injection import decodable_accept_encoding
from proxy.upstream_http import BODYLESS_METHODS, BodySource, HttpClientError, HttpPool

# aiohttp's header names as compiled-in constants: compiled code looks ``hdrs.X`` up at each use.
_ACCEPT: Final = hdrs.ACCEPT
_ACCEPT_ENCODING: Final = hdrs.ACCEPT_ENCODING
_CONNECTION: Final = hdrs.CONNECTION
_CONTENT_TYPE: Final = hdrs.CONTENT_TYPE
_SEC_WEBSOCKET_PROTOCOL: Final = hdrs.SEC_WEBSOCKET_PROTOCOL
_UPGRADE: Final = hdrs.UPGRADE
_USER_AGENT: Final = hdrs.USER_AGENT

log = logging.getLogger("proxy.upstream")

# RFC 9110 7.6.1 plus the Proxy-* family: meaningful for one connection only, never forwarded.
HOP_BY_HOP: Final = frozenset(
    name.lower()
    for name in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
_HOP_BY_HOP_NAMES: Final = tuple(sorted(HOP_BY_HOP))
# Re-set by the sidecar on every request; a client's copy survives only from trusted_networks.
FORWARDED_HEADERS: Final = frozenset(
    name.lower() for name in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")
)
# Claims about the client or the URL that frameworks believe from a proxy: X-Forwarded-* (Symfony
# and Laravel read -Port and -Prefix too), nginx's realip X-Real-IP, the client-address headers
# of CDNs and load balancers that PHP code reads, and the rewritten-URL headers of IIS that
# Symfony and Zend route by. Kept only from trusted_networks.
_CLIENT_CLAIM_PREFIX: Final = b"x-forwarded-"
# The standard spelling of the forwarding headers, for a trusted hop's underscored one.
_DASHED: Final = {
    b"x-forwarded-proto": b"X-Forwarded-Proto",
    b"x-forwarded-host": b"X-Forwarded-Host",
    b"forwarded": b"Forwarded",
}
_CLIENT_CLAIMS: Final = frozenset(
    name.lower().encode()
    for name in (
        "Forwarded",
        "X-Real-IP",
        "X-Client-IP",
        "Client-IP",
        "True-Client-IP",
        "CF-Connecting-IP",
        "Fastly-Client-IP",
        "X-Cluster-Client-IP",
        "X-Original-Forwarded-For",
        "X-Original-URL",
        "X-Rewrite-URL",
    )
)
# Headers that aiohttp's server or client handle themselves for each hop.
_PER_HOP: Final = frozenset(("expect",))
# On editor GETs the shop must send a full page to inject into, not a 304.
CONDITIONAL_HEADERS: Final = frozenset(("if-none-match", "if-modified-since"))
# The WebSocket handshake is made anew on the upstream hop.
_WEBSOCKET_HANDSHAKE: Final = frozenset(
    name.lower()
    for name in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Accept",
    )
)
_NEVER_FORWARDED: Final = HOP_BY_HOP | _PER_HOP | _WEBSOCKET_HANDSHAKE
# The same sets as raw (bytes) names, for the request's raw header lines.
_NEVER_FORWARDED_RAW: Final = frozenset(name.encode() for name in _NEVER_FORWARDED)
_FORWARDED_RAW: Final = frozenset(name.encode() for name in FORWARDED_HEADERS)
_CONDITIONAL_RAW: Final = frozenset(name.encode() for name in CONDITIONAL_HEADERS)
# Every name request_headers treats other than by passing it on (X-Forwarded-* aside: by prefix).
_JUDGED_RAW = (
    _NEVER_FORWARDED_RAW
    | _FORWARDED_RAW
    | _CLIENT_CLAIMS
    | _CONDITIONAL_RAW
    | frozenset((b"host", b"content-length", b"cookie", b"accept-encoding"))
)
# "_" as the int `in` looks for in bytes: `b"_" in name` first tries the bytes as an int, fails and
# clears the error, about 10x the cost of the search (a browser's dozen headers: a few µs).
_UNDERSCORE: Final = ord("_")
# A header name as request_headers compares it, in one pass: letters lower-cased, digits and "-"
# kept, and every other byte made "_". HTTP lets a name hold "!#$%&'*+.^_`|~" too, and CGI-style
# servers read those as the "-" they stand beside: PHP-FPM and gunicorn fold "_", PHP's own server
# ".", lighttpd's FastCGI every byte but a letter or digit. So "X.Shop.User" is X-Shop-User there.
_NAME_BYTES: Final = b"-0123456789abcdefghijklmnopqrstuvwxyz"
_FOLD_NAME: Final = bytes.maketrans(
    bytes(range(256)),
    bytes(byte if byte in _NAME_BYTES else _UNDERSCORE for byte in bytes(range(256)).lower()),
)
# Read at most this much per chunk from the shop; keeps memory per request bounded.
READ_CHUNK: Final = 64 * 1024


class BodyFilter(Protocol):
    """Transforms a response body, all at once or as it streams (used to inject into HTML)."""

    def whole(self, body: bytes) -> bytes:
        """The transformed body of one that is all here (instead of feed and finish)."""
        ...

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Header names listed in Connection, lower-cased: hop-by-hop for this message only."""
    values = headers.getall(_CONNECTION, ())
    if not values:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(",") if token.strip())


def _connection_listed_raw(headers: CIMultiDictProxy[str]) -> frozenset[bytes]:
    """:func:`connection_listed` as raw (bytes) names."""
    if _CONNECTION not in headers:
        return frozenset()
    return frozenset(name.encode("utf-8", "surrogateescape") for name in connection_listed(headers))


def is_websocket_upgrade(headers: CIMultiDictProxy[str]) -> bool:
    """Tell whether a request with these headers asks to be switched to a WebSocket."""
    upgrade = headers.get(_UPGRADE)
    return upgrade is not None and upgrade.lower() == "websocket" and "upgrade" in connection_listed(headers)


def _create_aiohttp_session(settings: StorefrontSettings) -> aiohttp.ClientSession:
    """One pooled session per shop: no cookie jar, no decompression, explicit timeouts."""
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=None,
        sock_connect=settings.upstream_connect_timeout_s,
        # No response headers (or no body bytes) within this: the shop is too slow.
        sock_read=settings.upstream_timeout_s,
    )
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, enable_cleanup_closed=False)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        # The shop's cookies belong to the browser; bodies pass through as the shop encoded them.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        # Send only the headers the client sent; never add a User-Agent or Accept-Encoding of ours.
        skip_auto_headers=(_USER_AGENT, _ACCEPT_ENCODING, _ACCEPT),
        read_bufsize=READ_CHUNK,
    )


class UpstreamSession:
    """The clients of one shop: the HTTP/1.1 pool for plain http, aiohttp for the rest.

    aiohttp's session serves WebSockets, https shops and the session check.
    """

    def __init__(self, settings: StorefrontSettings) -> None:
        self.session = _create_aiohttp_session(settings)
        url = URL(settings.upstream)
        self.pool: HttpPool | None = None
        if url.scheme == "http" and url.host is not None:
            self.pool = HttpPool(
                url.host,
                url.port or 80,
                connect_timeout=settings.upstream_connect_timeout_s,
                read_timeout=settings.upstream_timeout_s,
            )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        await self.session.close()


def create_upstream_session(settings: StorefrontSettings) -> UpstreamSession:
    """The clients of one shop (closed with ``await ….close()``)."""
    return UpstreamSession(settings)


class OutgoingHeaders:
    """The request headers for the shop as they go on the wire, with what the request line needs.

    ``parts`` is the header block in pieces, four per header (name, ``": "``, value, CRLF), all
    bytes as the client sent them: joined once into the request head, never decoded on the way.
    """

    __slots__ = ("content_length", "has_host", "method", "parts", "target")

    def __init__(
        self, method: str, parts: list[bytes], has_host: bool, content_length: bytes | None, target: str
    ) -> None:
        self.method = method
        self.parts = parts
        self.has_host = has_host
        self.content_length = content_length
        # The request target in origin form (or "*"), still percent-encoded as the client sent it.
        self.target = target

    def multidict(self) -> CIMultiDict[str]:
        """The same headers for aiohttp's client (https shops, WebSockets)."""
        parts = self.parts
        return CIMultiDict(
            [
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                for name, value in zip(parts[0::4], parts[2::4], strict=True)
            ]
        )

    def select(self, names: Collection[bytes], prefix: bytes | None = None) -> CIMultiDict[str]:
        """Those of these headers whose lower-case names are in ``names`` or start with ``prefix``.

        The session check uses it to reach the shop with the page's own Host, X-Forwarded-* and
        cookies, built by :meth:`Upstream.request_headers` once for both.
        """
        parts = self.parts
        return CIMultiDict(
            [
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                for name, value in zip(parts[0::4], parts[2::4], strict=True)
                if (lowered := name.lower()) in names or (prefix is not None and lowered.startswith(prefix))
            ]
        )


class ShopResponse(Protocol):
    """What the handler and relay read of the shop's answer, whichever client fetched it."""

    status: int
    reason: str
    raw_headers: list[tuple[str, str]]

    async def read(self) -> bytes: ...

    def read_buffered(self) -> bytes:
        """The body bytes that arrived and were not read yet, without waiting."""
        ...

    def at_eof(self) -> bool:
        """Whether every body byte has been read already (no wait to learn the body ended)."""
        ...

    def body_complete(self) -> bool:
        """Whether the whole body has arrived (read or not): nothing more to wait for."""
        ...

    def release(self) -> None: ...


class _AiohttpShopResponse:
    """aiohttp's response (https shops) seen as a :class:`ShopResponse`."""

    __slots__ = ("raw_headers", "reason", "response", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status = response.status
        self.reason = response.reason or ""
        self.raw_headers = list(response.headers.items())

    async def read(self) -> bytes:
        return await self.response.content.read(READ_CHUNK)

    def read_buffered(self) -> bytes:
        return self.response.content.read_nowait()

    def at_eof(self) -> bool:
        return self.response.content.at_eof()

    def body_complete(self) -> bool:
        return self.response.content.is_eof()

    def release(self) -> None:
        self.response.release()


class Upstream:
    """The shop of one storefront, reached through one pooled session."""

    def __init__(self, settings: StorefrontSettings, clients: UpstreamSession) -> None:
        self.name = settings.name
        self.session = clients.session
        self._pool = clients.pool
        self._base = settings.upstream.rstrip("/")
        url = URL(self._base)
        # What a plain-http request line starts its target with, and Host when the client sent none.
        self._prefix = url.raw_path.rstrip("/").encode("ascii")
        self._host_line = f"Host: {url.raw_authority}\r\n".encode("ascii")

    def url_for(self, path_qs: str) -> URL:
        """The shop URL of a raw (still percent-encoded) path and query."""
        return URL(self._base + path_qs, encoded=True)

    @staticmethod
    def request_headers(
        message: Any,
        remote: str | None,
        *,
        trusted: bool,
        host: str | None,
        target: str,
        drop: Collection[bytes] = (),
        drop_conditional: bool = False,
        drop_cookie: str | None = None,
        underscores: bool = False,
        plain: Collection[bytes] = (),
    ) -> OutgoingHeaders:
        """Headers to send upstream: hop-by-hop and ``drop`` removed, Host and X-Forwarded-* set.

        Read from the request's parsed head (``message``, see
        :func:`~proxy.client_response.parsed_head`): its raw header lines (bytes as the client
        sent them: aiohttp's parser has refused any with a CR or LF in them), their multidict and
        its method. ``remote`` is the client's address. ``host`` is the normalised host the
        request was routed by (sent as Host instead of the client's spelling; None: the request
        had none) and ``target`` the origin-form target. ``drop`` holds the identity header's key
        (:func:`~proxy.identity.header_key`: lower case, ``-`` between words): from an untrusted
        peer every spelling of it goes, from a trusted one every spelling but those in ``plain``
        (lower case: the one read as the customer; a shop reading another would name someone else).
        From an untrusted peer a name with any byte but a letter, a digit or ``-`` goes, as
        nginx's ``ignore_invalid_headers`` drops it (CGI-style servers read ``X_Forwarded_For``
        and, some, ``X.Forwarded.For`` as X-Forwarded-For); with ``underscores`` one whose only
        such bytes are ``_`` passes. X-Forwarded-*, Forwarded and X-Real-IP from an untrusted
        peer go in every spelling. A trusted peer's name with such bytes is judged as the name
        with ``-`` for them, as those servers read it. ``drop_conditional``
        (editor pages): no conditional headers, and only codings the injector can decode, so the
        shop answers with a full page the token can go into. ``drop_cookie`` names a cookie taken
        out of every Cookie header (a header left empty goes).
        """
        listed = _connection_listed_raw(message.headers)
        parts: list[bytes] = []
        host_value = host.encode("ascii") if host is not None else None
        if host_value is not None:
            parts += (b"Host", b": ", host_value, b"\r\n")
        prior_for: list[bytes] = []
        has_proto = has_forwarded_host = False
        content_length: bytes | None = None
        judged = _JUDGED_RAW  # once, not per header (a module global; a test swaps it)
        raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers
        for name, value in raw_headers:
            lowered = name.translate(_FOLD_NAME)
            if (
                lowered not in judged
                and _UNDERSCORE not in lowered
                and not lowered.startswith(_CLIENT_CLAIM_PREFIX)
                and not (listed and lowered in listed)
                and not (drop and lowered in drop)
            ):
                # Most of a browser's headers (User-Agent, Accept, Referer, ...): nothing below
                # would look at them twice.
                parts += (name, b": ", value, b"\r\n")
                continue
            # A name with "_" or another byte but a letter, digit or "-" in it.
            odd = _UNDERSCORE in lowered
            if odd:
                spelt = name.lower()
                dashed = lowered.replace(b"_", b"-")
                if not trusted and not (underscores and spelt.replace(b"_", b"-") == dashed):
                    continue  # from outside: only "_", and only with underscores_in_headers
                if listed and spelt in listed:
                    continue
                # Judged as a CGI-style server will read it; only the real Content-Length frames.
                lowered = dashed
                if lowered == b"content-length":
                    continue
            if lowered in _NEVER_FORWARDED_RAW or (listed and lowered in listed):
                continue
            if drop and lowered in drop and (not trusted or name.lower() not in plain):
                continue
            if lowered in _FORWARDED_RAW:
                if not trusted:
                    continue
                if lowered == b"x-forwarded-for":
                    prior_for.append(value)
                    continue
                if lowered == b"x-forwarded-proto":
                    has_proto = True
                elif lowered == b"x-forwarded-host":
                    has_forwarded_host = True
                # A trusted hop's X_Forwarded_Proto is the shop's X-Forwarded-Proto (CGI reads it
                # so): spelt that way, every reader of the page's headers (the session check) sees it.
                if odd:
                    name = _DASHED[lowered]
            elif lowered.startswith(_CLIENT_CLAIM_PREFIX) or lowered in _CLIENT_CLAIMS:
                if not trusted:
                    continue
            elif lowered == b"host":
                continue  # sent above, as matched
            elif lowered == b"content-length":
                content_length = value
            elif lowered == b"cookie" and drop_cookie is not None:
                # Latin-1 maps every byte to one character and back: nothing the client sent is lost.
                value = cookie_header_without(value.decode("latin-1"), drop_cookie).encode("latin-1")
                if not value:
                    continue
            elif drop_conditional:
                if lowered in _CONDITIONAL_RAW:
                    continue
                if lowered == b"accept-encoding":
                    value = decodable_accept_encoding(value.decode("latin-1")).encode("latin-1")
            parts += (name, b": ", value, b"\r\n")
        peer = (remote or "").encode()
        forwarded_for = b", ".join((*prior_for, peer)) if prior_for else peer
        parts += (b"X-Forwarded-For", b": ", forwarded_for, b"\r\n")
        if not has_proto:
            # The shop listener speaks plain HTTP: TLS, if any, ended at a hop before it.
            parts += (b"X-Forwarded-Proto", b": ", b"http", b"\r\n")
        if not has_forwarded_host and host_value is not None:
            parts += (b"X-Forwarded-Host", b": ", host_value, b"\r\n")
        return OutgoingHeaders(message.method, parts, host_value is not None, content_length, target)

    async def open(self, headers: OutgoingHeaders, source: BodySource | None = None) -> ShopResponse:
        """Send the request with its body; return once the shop's headers arrived.

        ``source``: the request's body, read in full (:mod:`proxy.buffering`) or streamed from the
        client (``request.content``); None: it has none.
        """
        if self._pool is None:
            return await self._open_aiohttp(headers, source)
        method = headers.method
        target = headers.target.encode("utf-8", "surrogateescape")
        # "OPTIONS *" asks about the server itself: the asterisk goes as it is, without the prefix.
        prefix = self._prefix if target != b"*" else b""
        parts = [method.encode("ascii"), b" ", prefix, target, b" HTTP/1.1\r\n"]
        # The lines put together here, each ending in its CRLF: the request line, the headers
        # (four parts each), the blank line and each line added below.
        lines = 2 + len(headers.parts) // 4
        if not headers.has_host:
            parts.append(self._host_line)
            lines += 1
        parts += headers.parts
        content_length: int | None = None
        if source is not None:
            if headers.content_length is None:
                parts.append(b"Transfer-Encoding: chunked\r\n")
                lines += 1
            else:
                content_length = int(headers.content_length)
        elif headers.content_length is None and method not in BODYLESS_METHODS:
            parts.append(b"Content-Length: 0\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # Nothing else breaks a line: as many CRs and LFs as line ends means none is anywhere
        # else (aiohttp's parser refused CR and LF inside the client's lines already; this guards
        # the target and the sidecar's additions). Two C-speed counts, not three.
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise ValueError("newline or carriage return in the request head")
        try:
            return await self._pool.request(method, head, source, content_length)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{self.name}: no response within the timeout") from exc
        except (OSError, HttpClientError) as exc:
            raise UpstreamUnreachable(f"{self.name}: {type(exc).__name__}") from exc

    async def _open_aiohttp(self, headers: OutgoingHeaders, source: BodySource | None) -> ShopResponse:
        try:
            response = await self.session.request(
                headers.method,
                self.url_for(headers.target),
                headers=headers.multidict(),
                data=source,
                allow_redirects=False,
                compress=None,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"{self.name}: no response within the timeout") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"{self.name}: {type(exc).__name__}") from exc
        if response.status < 200:
            # aiohttp's client reads past interim answers but hands over a 101, which no request
            # from this client asked for: what follows would be another protocol (the pool's rule).
            response.close()
            log.warning(
                "shop broke the protocol: %d to a request that did not ask to upgrade", response.status
            )
            raise UpstreamUnreachable(f"{self.name}: {response.status} to a plain request")
        return _AiohttpShopResponse(response)

    async def relay(
        self,
        request: web.BaseRequest,
        upstream: ShopResponse,
        headers: CIMultiDict[str],
        body_filter: BodyFilter | None = None,
        buffering: Buffering | None = None,
    ) -> web.StreamResponse:
        """Stream the shop's body to the client, through ``body_filter`` when given.

        Most pages have all arrived with their headers: :func:`write_whole` sends those, status
        line, headers and body in one write (a rewritten page with its new Content-Length). Any
        other response streams, its headers at once and its body as the shop sends it; with
        ``buffering``, what a slow client has not taken yet is held for it (a ResponseFeed), so
        the shop is read at its own pace, unless the response is a stream (server-sent events).
        """
        status, reason = upstream.status, upstream.reason
        response: web.StreamResponse | None = None
        feed: ResponseFeed | None = None
        try:
            if upstream.body_complete():
                # Most pages: all here with their headers, rewritten or not; one write. The
                # shop's connection goes back first: a slow client holds only the page.
                body = upstream.read_buffered()
                upstream.release()
                if body_filter is not None:
                    body = body_filter.whole(body)
                return await _write_whole(request, status, reason, headers, body)
            if body_filter is None:
                # More is coming (a stream, a long poll, a slow page): the status and headers go
                # out now, not when the first body bytes do.
                response = web.StreamResponse(status=status, reason=reason, headers=headers)
                await to_client(response.prepare(request))
                first = await upstream.read()
            else:
                # A page to rewrite waits for its body anyway; if it is whole then, one write.
                first = await upstream.read()
                if upstream.at_eof():
                    upstream.release()
                    return await _write_whole(request, status, reason, headers, body_filter.whole(first))
                response = web.StreamResponse(status=status, reason=reason, headers=headers)
                await to_client(response.prepare(request))
            feed = _feed(request, response, headers, buffering)
            await feed.write(first if body_filter is None else body_filter.feed(first))
            while chunk := await upstream.read():
                if body_filter is not None:
                    chunk = body_filter.feed(chunk)
                if upstream.at_eof():
                    break
                await feed.write(chunk)
            else:
                chunk = b""
            if body_filter is not None:
                chunk += body_filter.finish()
            # The shop is done: its connection goes back while the client still takes the rest.
            upstream.release()
            await feed.finish(chunk)
        except (OSError, HttpClientError, aiohttp.ClientError, ValueError) as exc:
            # The shop's side (a client's write failing is ClientGone, raised on to the handler).
            if feed is not None and (feed.client_gone or _client_left(request)):
                # The client had left already: that is what ended the request.
                raise ClientGone("mid-response") from exc
            log.warning(
                "shop response broke off mid-body",
                extra={"path": request.path, "error": type(exc).__name__},
            )
            if response is None or not response.prepared:
                # Nothing was sent yet: the client can still be told properly.
                return _broken_off()
            # Headers are out: the only honest signal left is to cut the connection short.
            if request.transport is not None:
                request.transport.close()
        finally:
            if feed is not None:
                feed.close()
            upstream.release()
        return response

    async def websocket(self, request: web.BaseRequest, outgoing: OutgoingHeaders) -> web.StreamResponse:
        """Connect to the shop's WebSocket first, then upgrade the client and pump both ways."""
        protocols = _split_tokens(request.headers.getall(_SEC_WEBSOCKET_PROTOCOL, ()))
        headers = outgoing.multidict()
        headers.popall(_SEC_WEBSOCKET_PROTOCOL, None)
        if not web.WebSocketResponse(protocols=protocols).can_prepare(request).ok:
            # A handshake this side could never complete (no key, bad version): refuse it before
            # a connection to the shop is spent on it.
            return web.Response(status=400, text="bad WebSocket handshake\n")
        try:
            shop_ws = await self.session.ws_connect(
                self.url_for(outgoing.target),
                headers=headers,
                protocols=protocols,
                autoclose=False,
                max_msg_size=0,
                compress=0,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"{self.name}: WebSocket handshake timed out") from exc
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status is not None and 400 <= exc.status < 600:
                # The shop's own refusal (401, 404, 503...): the client may act on it.
                return web.Response(status=exc.status, text="shop refused the WebSocket\n")
            # A 2xx (an ordinary page) or a botched 101 is no answer to an upgrade.
            return web.Response(status=502, text="bad gateway: the shop did not accept the WebSocket\n")
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"{self.name}: {type(exc).__name__}") from exc
        client_ws = web.WebSocketResponse(
            protocols=(shop_ws.protocol,) if shop_ws.protocol else (),
            autoclose=False,
            max_msg_size=0,
            compress=False,
        )
        try:
            await client_ws.prepare(request)
            to_shop = asyncio.create_task(_pump(client_ws, shop_ws))
            to_client = asyncio.create_task(_pump(shop_ws, client_ws))
            done, pending = await asyncio.wait((to_shop, to_client), return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                # A side that went away mid-message ends the session; that is not an error.
                if not task.cancelled() and (error := task.exception()) is not None:
                    log.debug("WebSocket ended by %s", type(error).__name__, extra={"path": request.path})
        finally:
            await shop_ws.close()
        return client_ws


async def _write_whole(
    request: web.BaseRequest, status: int, reason: str, headers: CIMultiDict[str], body: bytes
) -> web.StreamResponse:
    """:func:`write_whole`, or a 502 when the head cannot be written (nothing was)."""
    try:
        return await write_whole(request, status, reason, headers, body)
    except ValueError as exc:
        # A line break or control character in the head: httptools lets NUL, VT and DEL through
        # in a reason phrase.
        log.warning("shop response head refused: %s", exc, extra={"path": request.path})
        return _broken_off()


def _feed(
    request: web.BaseRequest,
    response: web.StreamResponse,
    headers: CIMultiDict[str],
    buffering: Buffering | None,
) -> ResponseFeed:
    """How a streamed body goes to the client: held for a slow one, or (a stream) at its pace."""
    if (
        buffering is None
        or buffering.streams(request.path)
        or buffering.streams_response(headers.get(_CONTENT_TYPE))
    ):
        # Nothing held back: each write waits while the client's socket is full (the one chunk in
        # the spool stays in memory, never in a file).
        return ResponseFeed(response, Spool(), max_held=0)
    return buffering.feed(response, request.transport)


def _client_left(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _broken_off() -> web.Response:
    return web.Response(status=502, text="bad gateway: the shop's answer broke off\n")


WebSocketLike = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: WebSocketLike, sink: WebSocketLike) -> None:
    """Copy messages from one side to the other until one closes; the close code goes across."""
    while True:
        message = await source.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type is aiohttp.WSMsgType.CLOSE:
            code = int(message.data) if message.data else aiohttp.WSCloseCode.OK
            reason = (message.extra or "").encode()
            await sink.close(code=code, message=reason)
            await source.close(code=code, message=reason)
            return
        elif message.type in (
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        ):
            await sink.close(code=aiohttp.WSCloseCode.GOING_AWAY)
            return


def _split_tokens(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(token.strip() for value in values for token in value.split(",") if token.strip())


def response_headers(upstream: ShopResponse) -> CIMultiDict[str]:
    """The shop's response headers less hop-by-hop ones (those it named in Connection too)."""
    headers = CIMultiDict(upstream.raw_headers)
    if _CONNECTION in headers:
        for name in connection_listed(headers):
            headers.popall(name, None)
    for name in _HOP_BY_HOP_NAMES:
        if name in headers:
            del headers[name]
    return headers
