"""Forwarding to the shop: request headers in, response headers out, bodies streamed, WebSockets.

Nothing here knows about customers or tokens; the handler decides what to strip or add and hands
this module the header sets and an optional body filter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable
from typing import Protocol

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import StorefrontSettings
from proxy.errors import UpstreamTimeout, UpstreamUnreachable

log = logging.getLogger("proxy.upstream")

# RFC 9110 7.6.1 plus the Proxy-* family: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
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
# Re-set by the sidecar on every request; a client's copy survives only from trusted_networks.
FORWARDED_HEADERS = frozenset(
    name.lower() for name in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")
)
# Headers that aiohttp's server or client handle themselves for each hop.
_PER_HOP = frozenset(("expect",))
# On editor GETs the shop must send a full page to inject into, not a 304.
CONDITIONAL_HEADERS = frozenset(("if-none-match", "if-modified-since"))
# The WebSocket handshake is made anew on the upstream hop.
_WEBSOCKET_HANDSHAKE = frozenset(
    name.lower()
    for name in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Accept",
    )
)
_NEVER_FORWARDED = HOP_BY_HOP | _PER_HOP | _WEBSOCKET_HANDSHAKE
# Read at most this much per chunk from the shop; keeps memory per request bounded.
READ_CHUNK = 64 * 1024


class BodyFilter(Protocol):
    """Transforms a response body as it streams (used to inject into HTML)."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Header names listed in Connection, lower-cased: hop-by-hop for this message only."""
    values = headers.getall(hdrs.CONNECTION, ())
    if not values:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(",") if token.strip())


def is_websocket_upgrade(request: web.Request) -> bool:
    """Tell whether the client asks to switch this request to a WebSocket."""
    upgrade = request.headers.get(hdrs.UPGRADE, "")
    return upgrade.lower() == "websocket" and "upgrade" in connection_listed(request.headers)


def create_upstream_session(settings: StorefrontSettings) -> aiohttp.ClientSession:
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
        skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT_ENCODING, hdrs.ACCEPT),
        read_bufsize=READ_CHUNK,
    )


class Upstream:
    """The shop of one storefront, reached through one pooled session."""

    def __init__(self, settings: StorefrontSettings, session: aiohttp.ClientSession) -> None:
        self.name = settings.name
        self.session = session
        self._base = settings.upstream.rstrip("/")

    def url_for(self, path_qs: str) -> URL:
        """The shop URL of a raw (still percent-encoded) path and query."""
        return URL(self._base + path_qs, encoded=True)

    def request_headers(
        self,
        request: web.Request,
        *,
        trusted: bool,
        drop: Collection[str] = (),
        drop_conditional: bool = False,
        scheme: str,
    ) -> CIMultiDict[str]:
        """Headers to send upstream: hop-by-hop and ``drop`` removed, X-Forwarded-* set.

        ``drop`` holds lower-case names with ``_`` spelled ``-``; every spelling of them goes.
        """
        incoming = request.headers
        listed = connection_listed(incoming)
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in incoming.items():
            lowered = name.lower()
            if lowered in _NEVER_FORWARDED or lowered in listed:
                continue
            if drop and lowered.replace("_", "-") in drop:
                continue
            if not trusted and lowered in FORWARDED_HEADERS:
                continue
            if drop_conditional and lowered in CONDITIONAL_HEADERS:
                continue
            out.add(name, value)
        peer = request.remote or ""
        prior = out.popall(hdrs.X_FORWARDED_FOR, ())
        out[hdrs.X_FORWARDED_FOR] = ", ".join((*prior, peer)) if prior else peer
        if hdrs.X_FORWARDED_PROTO not in out:
            out[hdrs.X_FORWARDED_PROTO] = scheme
        if hdrs.X_FORWARDED_HOST not in out and request.host:
            out[hdrs.X_FORWARDED_HOST] = request.host
        return out

    async def open(self, request: web.Request, headers: CIMultiDict[str]) -> aiohttp.ClientResponse:
        """Send the request with its body streamed; return once the shop's headers arrived."""
        body = request.content if request.body_exists else None
        try:
            return await self.session.request(
                request.method,
                self.url_for(request.raw_path),
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"{self.name}: no response within the timeout") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"{self.name}: {type(exc).__name__}") from exc

    async def relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        body_filter: BodyFilter | None = None,
    ) -> web.StreamResponse:
        """Stream the shop's body to the client, through ``body_filter`` when given."""
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(READ_CHUNK):
                if body_filter is not None:
                    chunk = body_filter.feed(chunk)
                    if not chunk:
                        continue
                await response.write(chunk)
            if body_filter is not None:
                tail = body_filter.finish()
                if tail:
                    await response.write(tail)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            log.debug("client went away mid-response", extra={"path": request.path})
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            # Headers are out: the only honest signal left is to cut the connection short.
            log.warning(
                "shop response broke off mid-body",
                extra={"path": request.path, "error": type(exc).__name__},
            )
            if request.transport is not None:
                request.transport.close()
        finally:
            upstream.release()
        return response

    async def websocket(self, request: web.Request, headers: CIMultiDict[str]) -> web.StreamResponse:
        """Connect to the shop's WebSocket first, then upgrade the client and pump both ways."""
        protocols = _split_tokens(request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ()))
        headers.popall(hdrs.SEC_WEBSOCKET_PROTOCOL, None)
        if not web.WebSocketResponse(protocols=protocols).can_prepare(request).ok:
            # A handshake this side could never complete (no key, bad version): refuse it before
            # a connection to the shop is spent on it.
            return web.Response(status=400, text="bad WebSocket handshake\n")
        try:
            shop_ws = await self.session.ws_connect(
                self.url_for(request.raw_path),
                headers=headers,
                protocols=protocols,
                autoclose=False,
                max_msg_size=0,
                compress=0,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"{self.name}: WebSocket handshake timed out") from exc
        except aiohttp.WSServerHandshakeError as exc:
            return web.Response(status=exc.status or 502, text="shop refused the WebSocket\n")
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
            _, pending = await asyncio.wait((to_shop, to_client), return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await shop_ws.close()
        return client_ws


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


def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    """The shop's response headers less hop-by-hop ones (those it named in Connection too)."""
    listed = connection_listed(upstream.headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in listed:
            continue
        out.add(name, value)
    return out
