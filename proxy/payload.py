"""What the sidecar tells a page about its customer: the JSON object of the contract.

The same object goes into the editor page's element, answers ``GET /.cc-sidecar/token``, and
feeds the ``header`` and ``cookie`` modes (contract, "Where the token goes"). Nothing here does
I/O on the request path:

- :class:`TokenPayload` is the object itself; :func:`render_element` wraps it in the
  ``<script id="cc-storefront-user" type="application/json">`` element, escaped so that nothing
  in it can end the element.
- :class:`PayloadMaker` is one storefront's, built at start-up from its settings: it turns a
  :class:`~proxy.tokens.CustomerToken` (or a cookie-less guest's id) into the object, with
  ``expiresIn`` and ``renewIn`` counted by the injected clock when the response leaves.
- :class:`Tenants` knows each storefront's tenant: ``customers_canvas.tenant_id``, else what
  the Storefront API reports for the storefront (learnt in the background at start-up, and again
  on use while unknown; a page never waits for it nor fails for want of it: its ``tenantId`` is
  null until the API has said).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from proxy.tokens import CustomerToken

log = logging.getLogger("proxy.payload")

ELEMENT_ID = "cc-storefront-user"
TOKEN_PATH = "/.cc-sidecar/token"  # noqa: S105 -- a URL path, not a secret
# After a failed lookup of the tenants, the next one waits at least this long.
TENANT_RETRY_S = 30.0

_ELEMENT_OPEN = f'<script id="{ELEMENT_ID}" type="application/json">'.encode("ascii")
_ELEMENT_CLOSE = b"</script>"


@dataclass(frozen=True, slots=True)
class TokenPayload:
    """What the editor learns about the current customer: who they are, their token, where CC is.

    ``token``, ``expires_at``, ``expires_in`` and ``renew_in`` are None for a guest whose request
    carried no cookie at all (contract, "Identity"): the page's script then fetches ``tokenUrl``,
    which brings the cookie back and makes the StorefrontUser. ``tenant_id`` is None only while
    the tenant is neither configured nor learnt from the API.
    """

    storefront_id: int
    tenant_id: int | None
    user_id: str
    is_anonymous: bool
    token: str | None
    expires_at: int | None
    expires_in: int | None
    renew_in: int | None
    cchub_url: str
    cchub_api_gateway_url: str

    def to_json(self) -> str:
        """The compact JSON object of the contract, ASCII only (anything else as ``\\uXXXX``)."""
        return json.dumps(
            {
                "storefrontId": self.storefront_id,
                "tenantId": self.tenant_id,
                "userId": self.user_id,
                "isAnonymous": self.is_anonymous,
                "token": self.token,
                "expiresAt": self.expires_at,
                "expiresIn": self.expires_in,
                "renewIn": self.renew_in,
                "tokenUrl": TOKEN_PATH,
                "cchubUrl": self.cchub_url,
                "cchubApiGatewayUrl": self.cchub_api_gateway_url,
            },
            separators=(",", ":"),
            # ASCII output escapes U+2028/U+2029 (line breaks to a JavaScript parser) and cannot
            # fail to encode, even for a lone surrogate.
            ensure_ascii=True,
        )


def render_element(payload: TokenPayload) -> bytes:
    """The ``<script id="cc-storefront-user" type="application/json">`` element, UTF-8.

    ``<``, ``>`` and ``&`` only ever occur inside JSON strings, where ``\\u003c`` and friends
    mean the same, so escaping them leaves the JSON intact while nothing in it can close the
    element (``</script>``) or open a comment (``<!--``) that would hide the close.
    """
    text = (
        payload.to_json()
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        # to_json escapes these already; kept so the element stays safe if that ever changes.
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return _ELEMENT_OPEN + text.encode("utf-8") + _ELEMENT_CLOSE


class Tenants:
    """Each storefront's tenant: the configured one, else the one the Storefront API reports."""

    def __init__(
        self,
        configured: int | None,
        lookup: Callable[[], Awaitable[Mapping[int, int | None]]],
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_s: float = TENANT_RETRY_S,
    ) -> None:
        self._configured = configured
        self._lookup = lookup
        self._clock = clock
        self._retry_s = retry_s
        self._learnt: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._next_try = -math.inf

    @property
    def configured(self) -> bool:
        return self._configured is not None

    def tenant_of(self, storefront_id: int) -> int | None:
        """The storefront's tenant, or None while unknown (a lookup is then started, no I/O here)."""
        if self._configured is not None:
            return self._configured
        tenant = self._learnt.get(storefront_id)
        if tenant is None:
            self.start()
        return tenant

    def start(self) -> None:
        """Start learning the tenants in the background, unless it runs or failed a moment ago."""
        if self._configured is not None or (self._task is not None and not self._task.done()):
            return
        now = self._clock()
        if now < self._next_try:
            return
        self._next_try = now + self._retry_s
        self._task = asyncio.create_task(self._learn())

    async def _learn(self) -> None:
        try:
            found = await self._lookup()
        except Exception as exc:
            # The pages go on with a null tenantId; a later page tries again.
            log.warning("could not learn the storefronts' tenants: %s", exc)
            return
        self._learnt.update({sid: tenant for sid, tenant in found.items() if tenant is not None})

    async def aclose(self) -> None:
        """Cancel a lookup in flight (at shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class PayloadMaker:
    """One storefront's payloads, built at start-up; rendering reads only fields."""

    __slots__ = ("_api_url", "_clock", "_hub_url", "_storefront_id", "_tenants")

    def __init__(
        self,
        storefront_id: int,
        tenants: Tenants,
        *,
        hub_url: str,
        api_url: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storefront_id = storefront_id
        self._tenants = tenants
        self._hub_url = hub_url
        self._api_url = api_url.rstrip("/")
        self._clock = clock

    def for_token(self, token: CustomerToken) -> TokenPayload:
        """The object for a customer with a token, its counts taken now."""
        expires_in, renew_in = self._counts(token)
        return TokenPayload(
            storefront_id=token.storefront_id,
            tenant_id=self._tenants.tenant_of(token.storefront_id),
            user_id=token.user_id,
            is_anonymous=token.is_anonymous,
            token=token.token,
            expires_at=token.expires_at,
            expires_in=expires_in,
            renew_in=renew_in,
            cchub_url=self._hub_url,
            cchub_api_gateway_url=self._api_url,
        )

    def for_deferred_guest(self, guest_id: str) -> TokenPayload:
        """A cookie-less guest's object: the id, no token yet (contract, "Identity")."""
        return TokenPayload(
            storefront_id=self._storefront_id,
            tenant_id=self._tenants.tenant_of(self._storefront_id),
            user_id=guest_id,
            is_anonymous=True,
            token=None,
            expires_at=None,
            expires_in=None,
            renew_in=None,
            cchub_url=self._hub_url,
            cchub_api_gateway_url=self._api_url,
        )

    def element(self, token: CustomerToken) -> bytes:
        """The rendered element of a token; cached per second, as one token serves many pages."""
        expires_in, renew_in = self._counts(token)
        # Keyed by the fields themselves: lru_cache hashes and compares those in C, where a
        # dataclass key would run its Python __hash__ and __eq__ on every page.
        return _rendered(
            token.storefront_id,
            self._tenants.tenant_of(token.storefront_id),
            token.user_id,
            token.is_anonymous,
            token.token,
            token.expires_at,
            expires_in,
            renew_in,
            self._hub_url,
            self._api_url,
        )

    def json(self, token: CustomerToken) -> bytes:
        """The token endpoint's body for a token."""
        return self.for_token(token).to_json().encode()

    def _counts(self, token: CustomerToken) -> tuple[int, int]:
        """``expiresIn`` and ``renewIn``: whole seconds, rounded down, never negative."""
        now = self._clock()
        return max(0, int(token.expires_at - now)), max(0, math.ceil(token.renew_at - now))


@functools.lru_cache(maxsize=4096)
def _rendered(
    storefront_id: int,
    tenant_id: int | None,
    user_id: str,
    is_anonymous: bool,
    token: str,
    expires_at: int,
    expires_in: int,
    renew_in: int,
    hub_url: str,
    api_url: str,
) -> bytes:
    return render_element(
        TokenPayload(
            storefront_id,
            tenant_id,
            user_id,
            is_anonymous,
            token,
            expires_at,
            expires_in,
            renew_in,
            hub_url,
            api_url,
        )
    )
