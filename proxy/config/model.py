"""Typed, frozen settings: what each key means, its type and its default.

Defaults are the ``DEFAULT_*`` constants below, one place for all of them. Parsing turns strings
into the types the request path uses (networks, listen addresses), so nothing is parsed per request.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

# Where the shop's traffic is served.
DEFAULT_LISTEN = "0.0.0.0:8080"
# Health, readiness and metrics; never shop traffic.
DEFAULT_ADMIN_LISTEN = "0.0.0.0:9090"
# The whole token work of one request (all its API calls together), in seconds.
DEFAULT_API_TIMEOUT_S = 5.0
# Consecutive API failures that open the circuit, and how long it stays open.
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_OPEN_S = 10.0
# A customer token without an ``exp`` claim is treated as living this long.
DEFAULT_TOKEN_LIFETIME_WITHOUT_EXP_S = 300.0
# Cached customer tokens; least recently used dropped first.
DEFAULT_TOKEN_CACHE_SIZE = 100_000
# No token is handed out this close to its ``exp`` (whatever min_token_ttl_s says).
DEFAULT_TOKEN_SKEW_S = 30.0
# No customer token is handed out with less than min(this, half its lifetime) left: an editor
# takes its token when it opens and cannot take a newer one, so this is an editing session.
DEFAULT_MIN_TOKEN_TTL_S = 1800.0
# In-flight requests may finish for this long after SIGTERM.
DEFAULT_SHUTDOWN_GRACE_S = 20.0
# No response headers from the shop within this: 504.
DEFAULT_UPSTREAM_TIMEOUT_S = 60.0
# No TCP connection to the shop within this: 502.
DEFAULT_UPSTREAM_CONNECT_TIMEOUT_S = 5.0
# A session-check answer is reused for this long per session.
DEFAULT_SESSION_CHECK_TTL_S = 60.0
# Each call to the shared token store (Redis) is given up after this; the page goes on without it.
DEFAULT_STORE_TIMEOUT_S = 0.25
# Every key the shared token store writes starts with this (several sidecars can share one Redis).
DEFAULT_STORE_KEY_PREFIX = "cc-sidecar:"
# New StorefrontUsers and merges one client (by address) may cause per minute, and at once.
DEFAULT_CLIENT_NEW_USERS_PER_MINUTE = 20.0
DEFAULT_CLIENT_NEW_USERS_BURST = 20
# New StorefrontUsers and merges per second for a storefront as a whole (also its burst).
DEFAULT_STOREFRONT_NEW_USERS_PER_S = 20.0
# Storefront API work for customers not yet known (Get, Create, their first GetToken, merges)
# running at once; known customers' calls never wait behind it.
DEFAULT_CONCURRENT_NEW_CUSTOMERS = 16
# One client's editor pages and /.cc-sidecar/ requests worked on at once (proxy.client_gate).
DEFAULT_CLIENT_PAGES_AT_ONCE = 32
# How long one of them waits for its turn before it is a 503 (proxy.client_gate).
DEFAULT_CLIENT_WAIT_S = 10.0
# Client limits, each nginx's default for its counterpart (docs/security.md, "Abuse").
# The whole request head must arrive within this (client_header_timeout).
DEFAULT_HEAD_TIMEOUT_S = 60.0
# An idle keep-alive connection is closed after this (keepalive_timeout).
DEFAULT_KEEPALIVE_TIMEOUT_S = 75.0
# Between two reads of a request body (client_body_timeout).
DEFAULT_BODY_TIMEOUT_S = 60.0
# A client whose socket stays full this long is cut off (send_timeout).
DEFAULT_SEND_TIMEOUT_S = 60.0
# Request line and headers together (large_client_header_buffers 4 8k: 32 KiB).
DEFAULT_MAX_HEAD_BYTES = 32 * 1024
# Largest request body (client_max_body_size, raised from nginx's 1m: a shop takes print files).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024 * 1024
# Request body bytes kept in memory before the rest goes to a temp file (client_body_buffer_size).
DEFAULT_BODY_MEMORY_BYTES = 64 * 1024
# Response bytes a slow client has not taken kept in memory before a temp file (proxy_buffers).
DEFAULT_RESPONSE_MEMORY_BYTES = 256 * 1024
# Response bytes held for a slow client at most, after which the shop is read at the client's
# pace (proxy_max_temp_file_size).
DEFAULT_MAX_RESPONSE_BUFFER_BYTES = 1024 * 1024 * 1024
# Bytes all temp files may hold at once, every request body and response spool together (nginx has
# no such total, only per-file maxima). The kubelet evicts a pod whose emptyDir passes its
# sizeLimit: the chart's /tmp is 320Mi, so this leaves 64Mi for anything else there. 256 MiB holds
# a 256 MiB upload, or sixteen slow clients' 16 MiB downloads, at once.
DEFAULT_MAX_TEMP_BYTES = 256 * 1024 * 1024
# Response content types always streamed to the client as they come (never held back).
DEFAULT_UNBUFFERED_CONTENT_TYPES = ("text/event-stream",)
InjectMode = Literal["html", "header", "cookie", "script"]
DEFAULT_INJECT: tuple[InjectMode, ...] = ("html",)

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_COOKIE_NAME = _HEADER_NAME


def split_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into its parts; raise ValueError if malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError("not a host:port address")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port out of range 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("not a host:port address") from None
    if not host or any(c.isspace() for c in host) or "/" in host:
        raise ValueError("not a host:port address")
    return host, port


def _hub_url_of(api_url: str) -> str:
    """``api_url`` without a leading ``api.`` host label (a self-hosted gateway keeps its URL)."""
    parts = urlsplit(api_url)
    host = parts.netloc
    if host[:4].lower() == "api." and len(host) > 4 and host[4] not in ":.":
        return parts._replace(netloc=host[4:]).geturl().rstrip("/")
    return api_url.rstrip("/")


def _check_listen(value: str) -> str:
    split_listen(value)
    return value


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("not an http(s) URL") from None
    return value.rstrip("/")


def _check_header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError("not a valid HTTP header name")
    return value


def _check_cookie_name(value: str) -> str:
    if not _COOKIE_NAME.match(value):
        raise ValueError("not a valid cookie name")
    return value


def _check_glob(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be a path starting with /")
    return value


def _check_host(value: str) -> str:
    name = value.strip().lower()
    if not name or any(c in name for c in " /:@"):
        raise ValueError(f"not a host name: {value!r}")
    return name


def _parse_network(value: object) -> object:
    """One trusted network, strictly: host bits set is an error showing the network meant."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    text = str(value)
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        meant = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not a network in CIDR notation: {text!r}") from None
    # A peer's address written with the prefix of its network: trusting the whole network
    # silently would widen trust beyond what the operator typed, so ask instead.
    raise ValueError(f"{text}: host bits set; did you mean {meant}?")


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
ListenAddress = Annotated[str, AfterValidator(_check_listen)]
HeaderName = Annotated[str, AfterValidator(_check_header_name)]
CookieName = Annotated[str, AfterValidator(_check_cookie_name)]
PathGlob = Annotated[str, AfterValidator(_check_glob)]
HostName = Annotated[str, AfterValidator(_check_host)]
# Each item is parsed on its own, so every bad item of a list is reported with its index.
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_parse_network)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BreakerSettings(_Frozen):
    """When repeated API failures hold calls back."""

    failures: int = Field(
        DEFAULT_BREAKER_FAILURES, ge=1, description="Consecutive failures that open the circuit."
    )
    open_s: PositiveSeconds = Field(
        DEFAULT_BREAKER_OPEN_S, description="Seconds the circuit stays open before a probe."
    )


class CustomersCanvasSettings(_Frozen):
    """How the sidecar reaches the Customer's Canvas Storefront API."""

    api_url: HttpUrl = Field(description="API gateway, e.g. https://api.customerscanvashub.com.")
    token_url: HttpUrl | None = Field(
        None, description="OAuth2 token endpoint; default {api_url}/connect/token."
    )
    client_id: str = Field(min_length=1, description="External App client id.")
    client_secret: SecretStr = Field(description="External App client secret; use ${ENV}.")
    tenant_id: int | None = Field(
        None,
        ge=1,
        description=(
            "Sent as tenantId when set, and goes on editor pages; unset, pages carry the tenant the"
            " API reports for the storefront (Storefronts_GetAll, asked at start-up)."
        ),
    )
    hub_url: HttpUrl | None = Field(
        None,
        description=(
            "The Customer's Canvas hub, cchubUrl on editor pages; default: api_url without a leading"
            ' "api." host label (https://api.eu.customerscanvashub.com gives'
            " https://eu.customerscanvashub.com; a gateway without one is its own hub URL)."
        ),
    )
    scope: str | None = Field(None, description="OAuth2 scopes, space separated; omitted = all allowed.")
    timeout_s: PositiveSeconds = Field(
        DEFAULT_API_TIMEOUT_S, description="The whole token work of one request."
    )
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    token_lifetime_without_exp_s: PositiveSeconds = Field(
        DEFAULT_TOKEN_LIFETIME_WITHOUT_EXP_S,
        description="Lifetime assumed for a customer token that carries no exp claim.",
    )

    @field_validator("client_secret")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @property
    def effective_token_url(self) -> str:
        """The token endpoint, defaulting to ``{api_url}/connect/token``."""
        return self.token_url or f"{self.api_url}/connect/token"

    @property
    def effective_hub_url(self) -> str:
        """The hub URL, defaulting to ``api_url`` without a leading ``api.`` host label."""
        return self.hub_url or _hub_url_of(self.api_url)


class SessionCheck(_Frozen):
    """Ask the shop who is logged in: GET ``url`` as the page reached the shop, read ``id_field``."""

    url: str = Field(description="Path on the upstream (or absolute http(s) URL).")
    id_field: str = Field(min_length=1, description="Dotted path of the customer id in the JSON answer.")
    ttl_s: PositiveSeconds = Field(DEFAULT_SESSION_CHECK_TTL_S, description="Answer cached per session.")

    @field_validator("url")
    @classmethod
    def _path_or_url(cls, value: str) -> str:
        if value.startswith("/"):
            return value
        try:
            return _check_http_url(value)
        except ValueError:
            raise ValueError("must be a path starting with / or an http(s) URL") from None


class UserSettings(_Frozen):
    """How a logged-in customer is recognised; the first that names one wins."""

    header: HeaderName | None = Field(
        None, description="Request header with the customer id, from trusted_networks only."
    )
    response_header: HeaderName | None = Field(None, description="Header the shop sets on its response.")
    session_check: SessionCheck | None = None


class SelectHeader(_Frozen):
    """Choose the storefront by a header the ingress sets instead of by Host."""

    name: HeaderName = Field(description="Request header the ingress sets.")
    value: str = Field(min_length=1, description="Its value that selects this storefront.")


class StorefrontSettings(_Frozen):
    """One shop behind the sidecar."""

    name: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Names the storefront in logs and metric labels.",
    )
    storefront_id: int = Field(ge=1, description="The Customer's Canvas storefront id.")
    hosts: tuple[HostName, ...] = Field((), description="Host names, port ignored, case-insensitive.")
    select_header: SelectHeader | None = None
    upstream: HttpUrl = Field(description="The shop's base URL.")
    upstream_timeout_s: PositiveSeconds = Field(
        DEFAULT_UPSTREAM_TIMEOUT_S,
        description=(
            "No response headers from the shop within this: 504 (noticed at most a tenth of it,"
            " and at most a second, late)."
        ),
    )
    upstream_connect_timeout_s: PositiveSeconds = Field(
        DEFAULT_UPSTREAM_CONNECT_TIMEOUT_S, description="No TCP connection to the shop within this: 502."
    )
    trusted_networks: tuple[Network, ...] = Field(
        (), description="Peers whose identity header and X-Forwarded-* are believed."
    )
    user: UserSettings = Field(default_factory=UserSettings)
    session_cookie: CookieName | None = Field(None, description="The shop's session cookie, e.g. PHPSESSID.")
    editor_paths: tuple[PathGlob, ...] = Field((), description="Globs; * stays in one segment, ** crosses.")
    inject: tuple[InjectMode, ...] = Field(
        DEFAULT_INJECT,
        description=(
            "Where the token goes on editor pages: any of html, header, cookie, script (the page"
            " script's tag after the html element, with the nonce of the page's CSP; implies html)."
        ),
    )
    secure_cookies: Literal["auto", "always"] = Field(
        "auto",
        description=(
            "auto: the sidecar's cookies are Secure when any X-Forwarded-Proto (or Forwarded proto)"
            " says https, whoever sent it (it only makes them stricter); always: Secure regardless"
            " (set it for a shop served only over https, e.g. with trusted_networks empty)."
        ),
    )
    underscores_in_headers: bool = Field(
        False,
        description=(
            "Forward request headers whose names contain _ from peers outside trusted_networks"
            " (as nginx's option of that name). Off: they are dropped, since CGI-style servers"
            " (PHP-FPM, gunicorn) read X_Forwarded_For as X-Forwarded-For. Names with any other"
            " byte but a letter, digit or - (X.Forwarded.For) are dropped from such peers either way,"
            " as nginx's ignore_invalid_headers does. Either way the identity header, X-Forwarded-*,"
            " Forwarded and X-Real-IP are dropped from such peers in every spelling."
        ),
    )

    @field_validator("inject")
    @classmethod
    def _unique_modes(cls, value: tuple[InjectMode, ...]) -> tuple[InjectMode, ...]:
        return tuple(dict.fromkeys(value))

    @property
    def injects_html(self) -> bool:
        """Editor pages get the token element (``script`` implies ``html``: its tag goes after it)."""
        return "html" in self.inject or "script" in self.inject


def _check_redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("must be a redis:// or rediss:// URL")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("must be a redis:// or rediss:// URL") from None
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError("the path must be a database number, e.g. /0")
    return value


RedisUrl = Annotated[str, AfterValidator(_check_redis_url)]


class SentinelSettings(_Frozen):
    """Find the Redis master through Sentinel; the url then gives only password, database and TLS.

    With a rediss:// url the sentinels are reached over TLS too, trusting the same ca_file.
    """

    master_name: str = Field(min_length=1, description="The name the sentinels monitor the master under.")
    addresses: tuple[ListenAddress, ...] = Field(
        min_length=1, description="Sentinels as host:port; any one that answers is enough."
    )
    password: SecretStr | None = Field(
        None, description="The sentinels' own password (requirepass); use ${ENV}."
    )


class RedisSettings(_Frozen):
    """Where the shared token store lives: one Redis or Valkey, a Sentinel set, or a Cluster."""

    url: RedisUrl = Field(
        description=(
            "redis:// or rediss:// (TLS), e.g. redis://:${REDIS_PASSWORD}@redis:6379/0; with sentinel"
            " the host is ignored, with cluster any node."
        )
    )
    sentinel: SentinelSettings | None = None
    cluster: bool = Field(False, description="The url names a node of a Redis Cluster.")
    key_prefix: str = Field(
        DEFAULT_STORE_KEY_PREFIX,
        pattern=r"^[A-Za-z0-9_.:-]*$",
        description="Every key starts with this; sidecars of different shops on one Redis need their own.",
    )
    timeout_s: PositiveSeconds = Field(
        DEFAULT_STORE_TIMEOUT_S,
        description=(
            "Each Redis call (connect included) is given up after this; the page goes on without it."
            " At most 1 s, and less than customers_canvas.timeout_s."
        ),
    )
    ca_file: str | None = Field(
        None, min_length=1, description="PEM file of the CA that signs Redis' certificate (rediss://)."
    )
    # Any character may be in it: a password expanded into the url must be percent-encoded (a "/",
    # "@" or "#" there breaks the url), so a generated one belongs here.
    password: SecretStr | None = Field(
        None,
        description=(
            "Redis' password (AUTH), e.g. ${REDIS_PASSWORD}, taken as it is; instead of one in the url"
            " (where it must be percent-encoded)."
        ),
    )


class BudgetSettings(_Frozen):
    """What one client, and a storefront as a whole, may cost Customer's Canvas in new users and merges.

    Customers already cached are never charged. Over budget, an editor page goes out without a
    token (X-CC-Sidecar: token-deferred) and /.cc-sidecar/token answers 429 with Retry-After.
    Shared by replicas through the Redis token store (per process while it is unavailable).
    """

    client_per_minute: float = Field(
        DEFAULT_CLIENT_NEW_USERS_PER_MINUTE,
        gt=0,
        description=(
            "New StorefrontUsers and merges one client may cause per minute (a token bucket; the"
            " client is its address as resolved through trusted_networks, an IPv6 one by its /64)."
        ),
    )
    client_burst: int = Field(
        DEFAULT_CLIENT_NEW_USERS_BURST, ge=1, description="How many of them one client may cause at once."
    )
    storefront_per_s: float = Field(
        DEFAULT_STOREFRONT_NEW_USERS_PER_S,
        gt=0,
        description=(
            "New StorefrontUsers and merges per second for each storefront as a whole (and its burst)."
        ),
    )
    concurrent_new_customers: int = Field(
        DEFAULT_CONCURRENT_NEW_CUSTOMERS,
        ge=1,
        description=(
            "Storefront API work for customers not yet known (Get, Create, first GetToken, merges)"
            " at once; known customers' calls never wait behind it."
        ),
    )
    client_pages_at_once: int = Field(
        DEFAULT_CLIENT_PAGES_AT_ONCE,
        ge=1,
        description=(
            "Editor pages and /.cc-sidecar/ requests of one client (as for client_per_minute) worked"
            " on at once; more wait their turn, so one client's flood cannot hold up other customers'"
            " pages (nginx: limit_conn, which refuses them with 503 at once)."
        ),
    )
    client_wait_s: PositiveSeconds = Field(
        DEFAULT_CLIENT_WAIT_S,
        description=(
            "How long one of those waits for its turn; past it, a 503 with Retry-After (the page"
            " script retries its token request after it)."
        ),
    )


class TokenStoreSettings(_Frozen):
    """Where customers, locks and per-session memory live: this process, or Redis shared by replicas."""

    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: each process for itself; redis: replicas act as one sidecar."
    )
    redis: RedisSettings | None = None


class LimitsSettings(_Frozen):
    """What one client may cost: time, head size and connections (nginx's counterpart in brackets)."""

    head_timeout_s: PositiveSeconds = Field(
        DEFAULT_HEAD_TIMEOUT_S,
        description="The whole request head must arrive within this, else the connection closes"
        " (nginx: client_header_timeout).",
    )
    keepalive_timeout_s: PositiveSeconds = Field(
        DEFAULT_KEEPALIVE_TIMEOUT_S,
        description="An idle keep-alive connection closes after this (nginx: keepalive_timeout).",
    )
    body_timeout_s: PositiveSeconds = Field(
        DEFAULT_BODY_TIMEOUT_S,
        description="Longest wait between two reads of a request body: 408 (nginx: client_body_timeout).",
    )
    send_timeout_s: PositiveSeconds = Field(
        DEFAULT_SEND_TIMEOUT_S,
        description="A client whose socket stays full (it reads nothing, or too little to make room)"
        " for this long is cut off (nginx: send_timeout).",
    )
    max_head_bytes: int = Field(
        DEFAULT_MAX_HEAD_BYTES,
        ge=1024,
        description="Request line and headers together; larger: 431 and the connection closes"
        " (nginx: large_client_header_buffers).",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="Open client connections at most; at the limit an idle one is closed for a new one."
        " 0: half the open-files limit (nginx: worker_connections).",
    )


class BufferingSettings(_Frozen):
    """Request and response bodies held by the sidecar so that a slow client never holds a shop worker."""

    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES,
        ge=0,
        description="Largest request body; larger: 413 (nginx: client_max_body_size).",
    )
    body_memory_bytes: int = Field(
        DEFAULT_BODY_MEMORY_BYTES,
        ge=0,
        description="Request body bytes kept in memory, the rest in a temp file"
        " (nginx: client_body_buffer_size).",
    )
    response_memory_bytes: int = Field(
        DEFAULT_RESPONSE_MEMORY_BYTES,
        ge=0,
        description="Response bytes a slow client has not taken yet kept in memory, the rest in a temp"
        " file (nginx: proxy_buffers).",
    )
    max_response_buffer_bytes: int = Field(
        DEFAULT_MAX_RESPONSE_BUFFER_BYTES,
        ge=0,
        description="Response bytes held for one slow client at most; past it the shop is read at the"
        " client's pace (nginx: proxy_max_temp_file_size).",
    )
    max_temp_bytes: int = Field(
        DEFAULT_MAX_TEMP_BYTES,
        ge=0,
        description="Bytes all temp files may hold at once, request and response bodies together; keep"
        " it below the space of temp_dir (a Kubernetes emptyDir's sizeLimit, past which the pod is"
        " evicted). A request body past what is free: 503 with Retry-After; larger than all of it: 413."
        " A response held for a slow client stops growing there and the shop is read at the client's"
        " pace. 0: no temp files, bodies held in memory only (nginx: none, per-file maxima only).",
    )
    temp_dir: str | None = Field(
        None,
        description="Where bodies past their memory share are kept (deleted at once, never named);"
        " none: $TMPDIR or /tmp (nginx: client_body_temp_path, proxy_temp_path).",
    )
    unbuffered_paths: tuple[str, ...] = Field(
        (),
        description="Paths (globs, as editor_paths) whose request and response bodies stream both ways"
        " unbuffered, e.g. a long-poll endpoint (nginx: proxy_buffering and proxy_request_buffering off).",
    )
    unbuffered_content_types: tuple[str, ...] = Field(
        DEFAULT_UNBUFFERED_CONTENT_TYPES,
        description="Response content types streamed as they come (nginx: X-Accel-Buffering: no)."
        " WebSockets always stream.",
    )


class Settings(_Frozen):
    """The whole configuration file."""

    listen: ListenAddress = Field(DEFAULT_LISTEN, description="Where shop traffic is served.")
    admin_listen: ListenAddress = Field(
        DEFAULT_ADMIN_LISTEN, description="/healthz, /readyz and /metrics; never shop traffic."
    )
    customers_canvas: CustomersCanvasSettings
    secret: SecretStr = Field(
        description="Signs the guest cookie and derives anonymous ids; at least 16 characters."
    )
    token_cache_size: int = Field(
        DEFAULT_TOKEN_CACHE_SIZE,
        ge=1,
        description="Cached customer tokens; the least recently used are dropped first.",
    )
    token_skew_s: float = Field(
        DEFAULT_TOKEN_SKEW_S,
        ge=0,
        description=(
            "No token is handed out within this many seconds of its exp; one that arrives so serves"
            " its request and is not cached."
        ),
    )
    min_token_ttl_s: float = Field(
        DEFAULT_MIN_TOKEN_TTL_S,
        ge=0,
        description=(
            "No token is handed out (page, header, cookie, token endpoint) with less than min(this,"
            " half its lifetime exp - iat) left; renewed ahead of that in the background."
        ),
    )
    shutdown_grace_s: float = Field(
        DEFAULT_SHUTDOWN_GRACE_S, ge=0, description="Seconds in-flight requests may finish after SIGTERM."
    )
    access_log: bool = Field(
        True,
        description="One JSON line per request (written with log_level INFO or DEBUG), in batches:"
        " within 1 s, or at 64 KB, and at shutdown.",
    )
    access_log_path: str | None = Field(
        None,
        min_length=1,
        description="File the access log is appended to (created if missing); null: stderr.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Least severe log level written to stderr."
    )
    storefronts: tuple[StorefrontSettings, ...]
    token_store: TokenStoreSettings = Field(default_factory=TokenStoreSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    buffering: BufferingSettings = Field(default_factory=BufferingSettings)

    @field_validator("secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value
