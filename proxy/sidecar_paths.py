"""The sidecar's own paths under ``/.cc-sidecar/``: answered here, never forwarded upstream.

The shop handler decides that a path is the sidecar's (every spelling a server could route
there, see :func:`proxy.routing.is_sidecar_path`) and hands it to :class:`SidecarPaths`, a
small route table: each path names the methods it takes and what answers it. A path not in
the table is 404, a method it does not take 405; every answer is ``Cache-Control: no-store``
unless its route says otherwise.

- ``GET /.cc-sidecar/token`` (:class:`TokenEndpoint`): the current customer's JSON object
  (contract, "Where the token goes"), 503 with ``Retry-After`` while Customer's Canvas cannot
  give a token, 429 with ``Retry-After`` over the new-customer budget, 403 to a request that is
  not the shop's own page's (:func:`proxy.fetch_metadata.token_request_allowed`). Asked at or
  after the ``renewIn`` it gave, it answers with a newer token.
- ``GET /.cc-sidecar/v1/cc-user.js`` and ``/.cc-sidecar/v1/cc-user.d.ts``
  (:class:`~proxy.static_files.StaticFile`): the page script and its TypeScript declarations,
  the same bytes for everyone, publicly cacheable with an ETag.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import hdrs, web
from multidict import CIMultiDict

from proxy.fetch_metadata import TOKEN_ENDPOINT_HEADERS, token_request_allowed
from proxy.payload import TOKEN_PATH
from proxy.static_files import StaticFile, StaticFiles

if TYPE_CHECKING:
    from proxy.handler import Attachment, Storefront

NO_STORE = "no-store"
STATUS_HEADER = "X-CC-Sidecar"


@dataclass(frozen=True, slots=True)
class SidecarRequest:
    """A request for one of the sidecar's paths, routed to its storefront."""

    request: web.BaseRequest
    storefront: Storefront
    trusted: bool  # the peer is in the storefront's trusted_networks
    host: str | None  # the normalised host the request was routed by


Answer = Callable[[SidecarRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """What answers one path, and the methods it takes (``allow``: the Allow header of a 405)."""

    answer: Answer
    methods: frozenset[str] = frozenset((hdrs.METH_GET, hdrs.METH_HEAD))
    allow: str = hdrs.METH_GET


class SidecarPaths:
    """The route table of ``/.cc-sidecar/``; built at start-up, read per request."""

    __slots__ = ("_routes",)

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._routes = dict(routes)

    async def answer(self, sidecar_request: SidecarRequest) -> web.StreamResponse:
        route = self._routes.get(sidecar_request.request.path)
        if route is None:
            return web.Response(status=404, text="not found\n", headers={hdrs.CACHE_CONTROL: NO_STORE})
        if sidecar_request.request.method not in route.methods:
            return web.Response(status=405, headers={hdrs.ALLOW: route.allow, hdrs.CACHE_CONTROL: NO_STORE})
        return await route.answer(sidecar_request)


class CustomerWork(Protocol):
    """Who the customer is and their token, as the shop handler works it out for a page."""

    async def token_endpoint_attachment(self, sidecar_request: SidecarRequest) -> Attachment:
        """The customer's token (a newer one once due), or a cookie-less guest's id, and cookies."""
        ...


class TokenEndpoint:
    """``GET /.cc-sidecar/token``: the same JSON object as the page's element, never cached."""

    __slots__ = ("_customers", "_retry_after")

    def __init__(self, customers: CustomerWork, *, retry_after_s: int) -> None:
        self._customers = customers
        self._retry_after = str(retry_after_s)

    async def __call__(self, sidecar_request: SidecarRequest) -> web.StreamResponse:
        storefront = sidecar_request.storefront
        headers = CIMultiDict({hdrs.CACHE_CONTROL: NO_STORE, **TOKEN_ENDPOINT_HEADERS})
        if not token_request_allowed(sidecar_request.request.headers, sidecar_request.host):
            return web.Response(
                status=403, text="the token endpoint answers only the shop's own pages\n", headers=headers
            )
        attachment = await self._customers.token_endpoint_attachment(sidecar_request)
        for cookie in attachment.set_cookies:
            headers.add(hdrs.SET_COOKIE, cookie)
        if attachment.token is not None:
            body = storefront.payloads.json(attachment.token)
        elif attachment.deferred_guest is not None:
            body = storefront.payloads.for_deferred_guest(attachment.deferred_guest).to_json().encode()
        elif attachment.over_budget_s is not None:
            headers[hdrs.RETRY_AFTER] = str(max(1, math.ceil(attachment.over_budget_s)))
            headers[STATUS_HEADER] = "token-deferred"
            return web.Response(status=429, text="too many new customers; retry later\n", headers=headers)
        else:
            headers[hdrs.RETRY_AFTER] = self._retry_after
            headers[STATUS_HEADER] = "token-unavailable"
            return web.Response(status=503, text="customer token unavailable\n", headers=headers)
        headers[hdrs.CONTENT_TYPE] = "application/json"
        return web.Response(body=body, headers=headers)


def _static_answer(static: StaticFile) -> Answer:
    async def answer(sidecar_request: SidecarRequest) -> web.StreamResponse:
        # The same bytes for everyone: no identity read, no cookie set.
        return static.respond(sidecar_request.request)

    return answer


def sidecar_paths(customers: CustomerWork, *, retry_after_s: int) -> SidecarPaths:
    """The table of every path the sidecar answers itself (the static files read here, once)."""
    # GET only: a HEAD would do a GET's customer work (a StorefrontUser made, a budget charged)
    # for a body nobody reads, and a token endpoint's answer is never cached to be revalidated.
    token = Route(TokenEndpoint(customers, retry_after_s=retry_after_s), methods=frozenset((hdrs.METH_GET,)))
    routes = {TOKEN_PATH: token}
    for path, static in StaticFiles().items():
        routes[path] = Route(_static_answer(static), allow="GET, HEAD")
    return SidecarPaths(routes)
