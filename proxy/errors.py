"""The one exception tree of cc-sidecar.

::

    SidecarError
    ├── ConfigError                 the configuration is unusable (start-up only)
    ├── StorefrontApiError          a call to the Customer's Canvas Storefront API failed
    │   ├── NotFound                404: the user (or storefront) does not exist
    │   ├── UserConflict            409: it exists already / was merged already
    │   ├── Unauthorized            401/403 even with a fresh access token
    │   ├── BadResponse             an answer the client cannot use (4xx, malformed body)
    │   └── StorefrontUnavailable   unreachable, 5xx, too slow, or the circuit is open
    │       └── CircuitOpen         held back by the breaker without a call
    ├── InvalidIdentity             a customer id that breaks the id rules
    ├── StoreUnavailable            the shared token store (Redis) failed or its breaker is open
    ├── OverBudget                  a new StorefrontUser or merge past the client's or storefront's budget
    ├── UpstreamError               the shop itself failed
    │   ├── UpstreamUnreachable     -> 502
    │   └── UpstreamTimeout         -> 504
    ├── ClientGone                  the client left (or stopped reading) mid-request -> 499
    └── BodyRefused                 the client's request body is not taken
        ├── BodyTooLarge            -> 413
        ├── BodyTimeout             -> 408
        └── TempSpaceFull           -> 503, Retry-After

Messages never contain a token, a client secret or a raw session id.
"""

from __future__ import annotations

from collections.abc import Sequence


class SidecarError(Exception):
    """Root of every error cc-sidecar raises on purpose."""


class ConfigError(SidecarError):
    """The configuration cannot be used; carries every problem found, each naming its key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StorefrontApiError(SidecarError):
    """A Storefront API call did not give the answer the caller needs."""

    def __init__(self, operation: str, detail: str, status: int | None = None) -> None:
        self.operation = operation
        self.status = status
        self.detail = detail
        suffix = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{operation}: {detail}{suffix}")


class NotFound(StorefrontApiError):
    """The API answered 404."""


class UserConflict(StorefrontApiError):
    """The API answered 409: the user exists already, or was merged already."""


class Unauthorized(StorefrontApiError):
    """The API refused the sidecar's credentials."""


class BadResponse(StorefrontApiError):
    """The API answered something the client cannot use."""


class StorefrontUnavailable(StorefrontApiError):
    """Customer's Canvas is unreachable, failing or too slow; the shop must go on without it."""


class CircuitOpen(StorefrontUnavailable):
    """The circuit breaker holds calls back after repeated failures."""


class InvalidIdentity(SidecarError):
    """A customer id that breaks the rules (length, characters); it is ignored, never sent on."""


class StoreUnavailable(SidecarError):
    """The shared token store cannot answer now; the caller carries on as with the memory store."""


class OverBudget(SidecarError):
    """A new StorefrontUser or a merge would exceed a budget; try again after ``retry_after_s``."""

    def __init__(self, scope: str, retry_after_s: float) -> None:
        self.scope = scope  # "client" or "storefront": whose budget ran out
        self.retry_after_s = retry_after_s
        super().__init__(f"over the {scope} budget for new StorefrontUsers (retry in {retry_after_s:.1f} s)")


class UpstreamError(SidecarError):
    """The shop (the upstream) failed to answer."""

    status = 502


class UpstreamUnreachable(UpstreamError):
    """The shop refused or dropped the connection."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """The shop sent no response headers within ``upstream_timeout_s``."""

    status = 504


class ClientGone(SidecarError):
    """The client closed its connection, or stopped reading, before its response was written.

    Not an error of the sidecar's nor the shop's (a visitor cancelled a download): logged once at
    INFO and counted as 499, nginx's "client closed request".
    """

    status = 499


class ClientBusy(SidecarError):
    """A request waited past ``budget.client_wait_s`` for its client's earlier pages (proxy.client_gate).

    nginx's ``limit_conn`` answers the excess 503 at once; here only once the wait is over, so a
    client whose pages come a few too many at once is slowed, and only a flood is refused.
    """

    status = 503
    text = "too many pages of this client at once; try again shortly\n"
    retry_after_s = 1


class BodyRefused(SidecarError):
    """The client's request body is refused before anything goes to the shop; the connection closes."""

    status = 400
    text = "bad request body\n"
    # Seconds a client should wait before it sends the body again (Retry-After); None: no header.
    retry_after_s: int | None = None


class BodyTooLarge(BodyRefused):
    """A request body past ``buffering.max_body_bytes`` (nginx: client_max_body_size)."""

    status = 413
    text = "request body too large\n"


class BodyTimeout(BodyRefused):
    """No request body bytes for ``limits.body_timeout_s`` (nginx: client_body_timeout)."""

    status = 408
    text = "request body timed out\n"


class TempSpaceFull(BodyRefused):
    """A request body the temp files have no room for now (``buffering.max_temp_bytes``).

    nginx's "temporarily unable": the room comes back as held bodies leave, so the client is told
    when to try again.
    """

    status = 503
    text = "temporarily unable to take the request body; try again later\n"
    # Held responses leave at their clients' pace: a retry sooner would most likely find them all still there.
    retry_after_s = 10
