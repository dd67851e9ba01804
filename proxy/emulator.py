"""The Storefront API emulator: a real aiohttp server that answers like Customer's Canvas.

It serves ``POST /connect/token`` (OAuth2 client credentials) and every operation of
``storefront-api.md`` under ``/api/storefront/v1``, with the same paths, status codes and shapes,
so any client of the real service works against it unchanged. Choices where the facts are silent:

- ``tenantId`` is optional; when given it must be the emulator's tenant, else 403 ProblemDetails
  (the access token belongs to one tenant; a non-integer is a 400 validation problem).
- 400 bodies are ASP.NET validation problems: ``{"type", "title", "status", "errors": {...}}``.
- A bad client id or secret is 400 ``{"error": "invalid_client"}``, or 401 when the client sent
  its credentials by HTTP Basic (RFC 6749 section 5.2).
- Every API call needs ``Authorization: Bearer`` with a live access token, else an empty 401
  with ``WWW-Authenticate: Bearer`` (as ASP.NET's JWT bearer handler answers).
- After MergeAnonymous the anonymous user is gone (Get gives 404); merging it again gives 409
  (merged already), any other missing side 404, a regular "anonymous" side or an anonymous
  "regular" side 409.
- StorefrontUsers_GetAll lists regular users only unless ``includeAnonymous=true``.
- GetToken answers ``text/plain`` unless the client accepts only JSON; then a JSON string.
- Customer tokens are RS256 JWTs (a key made when the first one is signed) with ``sub``,
  ``storefront_id``, ``tenant_id``, ``iat``, ``nbf``, ``exp`` (integer) and a unique ``jti``.

Every call (the token endpoint included, control endpoints not) is recorded in
:attr:`EmulatorState.calls`. Faults for tests are set on :attr:`EmulatorState.faults` in-process,
or over HTTP under ``/_emulator/`` when ``enable_control`` is on (404 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

import jwt
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

API_PREFIX: Final = "/api/storefront/v1"
OP_TOKEN: Final = "token"  # noqa: S105 - an operation name, not a secret
UNKNOWN_OPERATION: Final = "unknown"
# Storefront types the facts page lists; the emulator makes every storefront ``Custom``.
STOREFRONT_TYPE: Final = "Custom"
DEFAULT_SCOPE: Final = "StorefrontUsers_full Storefronts_full"
# Key size of the customer-token signing key (RS256).
_RSA_BITS = 2048
_PROBLEM_TYPES: Final = {
    400: "https://tools.ietf.org/html/rfc9110#section-15.5.1",
    403: "https://tools.ietf.org/html/rfc9110#section-15.5.4",
    404: "https://tools.ietf.org/html/rfc9110#section-15.5.5",
    409: "https://tools.ietf.org/html/rfc9110#section-15.5.10",
    500: "https://tools.ietf.org/html/rfc9110#section-15.6.1",
}
_REDACTED = "<redacted>"
# Types of the fields of /_emulator/faults documents (bool is not accepted as a number).
_FAULT_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "fail_status": (int,),
    "fail_remaining": (int,),
    "operations": (list,),
    "delay_s": (int, float),
    "drop_connection": (bool,),
    "malformed_answer": (bool,),
    "malformed_token": (bool,),
    "token_without_exp": (bool,),
    "token_text": (str,),
}
_NULLABLE_FAULTS: Final = frozenset({"fail_status", "fail_remaining", "operations", "token_text"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class SeedUser:
    """A StorefrontUser that exists when the emulator starts."""

    storefront_id: int
    user_id: str
    is_anonymous: bool = False


@dataclass(frozen=True)
class SeedStorefront:
    """A storefront with a name and status of its own (others get defaults)."""

    id: int
    name: str | None = None
    status: str = "Dev"
    type: str = STOREFRONT_TYPE


@dataclass
class EmulatorOptions:
    """What the emulator knows at start: its client, tenant, storefronts, users, lifetimes."""

    client_id: str = "demo"
    client_secret: str = "demo-secret"  # noqa: S105 - the documented demo default
    tenant_id: int = 1
    storefront_ids: tuple[int, ...] = (1,)
    # Customer tokens: ``exp`` is ``iat`` plus this.
    token_lifetime_s: int = 3600
    # Access tokens of the token endpoint (``expires_in``).
    access_token_lifetime_s: int = 3600
    # Serve /_emulator/* (call log, faults, reset); for tests only.
    enable_control: bool = False
    users: tuple[SeedUser, ...] = ()
    # Storefronts with names or statuses of their own; their ids need not be in storefront_ids.
    storefronts: tuple[SeedStorefront, ...] = ()


@dataclass
class RecordedCall:
    """One request the emulator answered; ``status`` is filled in once it has answered."""

    operation: str
    method: str
    path: str  # the raw (percent-encoded) path, as sent
    query: dict[str, str]  # the last value of each parameter (``types`` may repeat)
    json: Any  # the JSON body, or None
    time: float
    accept: str | None = None
    form: dict[str, str] | None = None  # the token endpoint's form, client_secret redacted
    status: int | None = None


@dataclass
class Faults:
    """What goes wrong, for tests. One set at a time; :meth:`EmulatorState.clear_faults` ends it.

    ``operations`` limits every fault to those operation names (``"token"`` is the token
    endpoint); None means every call. ``delay_s`` delays each matching answer. A failure is
    a connection closed without any answer (``drop_connection``), else a 200 HTML page where JSON
    belongs (``malformed_answer``), else an answer with ``fail_status``; ``fail_remaining``
    counts failures left (None: unlimited). ``malformed_token``, ``token_without_exp`` and
    ``token_text`` (this exact body instead of a token) change what GetToken hands out.
    """

    fail_status: int | None = None
    fail_remaining: int | None = None
    operations: frozenset[str] | None = None
    delay_s: float = 0.0
    drop_connection: bool = False
    malformed_answer: bool = False
    malformed_token: bool = False
    token_without_exp: bool = False
    token_text: str | None = None

    def matches(self, operation: str) -> bool:
        """Whether the faults apply to this operation."""
        return self.operations is None or operation in self.operations

    def take_failure(self) -> bool:
        """Whether this call fails; counts it against ``fail_remaining``."""
        if self.fail_status is None and not self.drop_connection and not self.malformed_answer:
            return False
        if self.fail_remaining is not None:
            if self.fail_remaining <= 0:
                return False
            self.fail_remaining -= 1
        return True

    def as_json(self) -> dict[str, Any]:
        """The faults as a JSON object (``operations`` as a sorted list)."""
        data = asdict(self)
        data["operations"] = None if self.operations is None else sorted(self.operations)
        return data


@dataclass
class EmulatedUser:
    """A StorefrontUser the emulator holds."""

    user_id: str
    storefront_id: int
    tenant_id: int
    is_anonymous: bool

    def dto(self) -> dict[str, Any]:
        """The StorefrontUserDto."""
        return {
            "userId": self.user_id,
            "tenantId": self.tenant_id,
            "storefrontId": self.storefront_id,
            "isAnonymous": self.is_anonymous,
        }


class EmulatorState:
    """Everything the emulator holds: storefronts, users, access tokens, faults, the call log."""

    def __init__(self, options: EmulatorOptions, *, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        # Unix seconds for token claims and access token expiry; tests may replace it.
        self.clock = clock
        self.calls: list[RecordedCall] = []
        # Called with each call once it has been answered (the demo narrates the flow with it).
        self.on_answered: list[Callable[[RecordedCall], None]] = []
        self.faults = Faults()
        self.storefronts: dict[int, dict[str, Any]] = {}
        self.users: dict[tuple[int, str], EmulatedUser] = {}
        # (storefront, anonymous id) -> the regular id it was merged into.
        self.merged: dict[tuple[int, str], str] = {}
        # access token -> expiry (clock time)
        self.access_tokens: dict[str, float] = {}
        self._signing_key: rsa.RSAPrivateKey | None = None
        self._key_id = uuid.uuid4().hex
        self._seed()

    # -- for tests ----------------------------------------------------------------------------

    def count(self, operation: str) -> int:
        """How many calls of ``operation`` were made (faulted ones included)."""
        return sum(1 for call in self.calls if call.operation == operation)

    def calls_of(self, operation: str) -> list[RecordedCall]:
        """The recorded calls of ``operation``, oldest first."""
        return [call for call in self.calls if call.operation == operation]

    def fail_operation(self, operation: str, *, status: int = 500, times: int | None = 1) -> None:
        """Answer ``operation`` with ``status``, ``times`` times (None: until cleared)."""
        self.faults = Faults(fail_status=status, fail_remaining=times, operations=frozenset({operation}))

    def fail_all(self, *, status: int = 500, times: int | None = None) -> None:
        """Answer every call (the token endpoint included) with ``status``."""
        self.faults = Faults(fail_status=status, fail_remaining=times)

    def delay(self, seconds: float, *, operations: Iterable[str] | None = None) -> None:
        """Hold every matching answer back for ``seconds``."""
        self.faults = Faults(
            delay_s=seconds, operations=None if operations is None else frozenset(operations)
        )

    def drop_connections(self, *, times: int | None = None, operations: Iterable[str] | None = None) -> None:
        """Close the connection without an answer, ``times`` times (None: until cleared)."""
        self.faults = Faults(
            drop_connection=True,
            fail_remaining=times,
            operations=None if operations is None else frozenset(operations),
        )

    def clear_faults(self) -> None:
        """Answer normally again."""
        self.faults = Faults()

    def revoke_access_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        self.access_tokens.clear()

    def reset(self) -> None:
        """Back to the start: seed users only, no calls, no faults, no access tokens."""
        self.calls.clear()
        self.clear_faults()
        self.access_tokens.clear()
        self._seed()

    @property
    def public_key_pem(self) -> bytes:
        """The public key that verifies customer tokens (PEM)."""
        return (
            self._key()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    # -- tokens -------------------------------------------------------------------------------

    def issue_access_token(self) -> str:
        """A new opaque access token, good for ``access_token_lifetime_s``."""
        token = secrets.token_urlsafe(32)
        self.access_tokens[token] = self.clock() + self.options.access_token_lifetime_s
        return token

    def access_token_valid(self, token: str) -> bool:
        """Whether the access token was issued here, is not revoked and has not expired."""
        expires_at = self.access_tokens.get(token)
        return expires_at is not None and self.clock() < expires_at

    def issue_token(self, storefront_id: int, user_id: str) -> str:
        """A customer token (RS256 JWT) for the user, honouring the token faults."""
        if self.faults.token_text is not None:
            return self.faults.token_text
        if self.faults.malformed_token:
            return "not-a-jwt"
        now = int(self.clock())
        claims: dict[str, Any] = {
            "sub": user_id,
            "storefront_id": storefront_id,
            "tenant_id": self.options.tenant_id,
            "iat": now,
            "nbf": now,
            "jti": uuid.uuid4().hex,
        }
        if not self.faults.token_without_exp:
            claims["exp"] = now + self.options.token_lifetime_s
        return jwt.encode(claims, self._key(), algorithm="RS256", headers={"kid": self._key_id})

    def _key(self) -> rsa.RSAPrivateKey:
        # Made on first use: most emulators in tests never sign a token.
        if self._signing_key is None:
            self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
        return self._signing_key

    # -- data ---------------------------------------------------------------------------------

    def _seed(self) -> None:
        options = self.options
        self.storefronts = {
            sid: _storefront_dto(SeedStorefront(sid), options.tenant_id) for sid in options.storefront_ids
        }
        for storefront in options.storefronts:
            self.storefronts[storefront.id] = _storefront_dto(storefront, options.tenant_id)
        self.users = {}
        self.merged = {}
        for user in options.users:
            self.add_user(user.storefront_id, user.user_id, is_anonymous=user.is_anonymous)

    def add_user(self, storefront_id: int, user_id: str, *, is_anonymous: bool) -> EmulatedUser:
        """Create a user directly (no call recorded)."""
        user = EmulatedUser(user_id, storefront_id, self.options.tenant_id, is_anonymous)
        self.users[(storefront_id, user_id)] = user
        self.merged.pop((storefront_id, user_id), None)
        return user


EMULATOR_STATE = web.AppKey("emulator_state", EmulatorState)


def _storefront_dto(storefront: SeedStorefront, tenant_id: int) -> dict[str, Any]:
    return {
        "id": storefront.id,
        "tenantId": tenant_id,
        "name": storefront.name or f"Storefront {storefront.id}",
        "type": storefront.type,
        "created": "2024-01-01T00:00:00Z",
        "status": storefront.status,
    }


# -- answers ----------------------------------------------------------------------------------


def _problem(
    request: web.Request,
    status: int,
    title: str,
    detail: str | None = None,
    errors: dict[str, list[str]] | None = None,
) -> web.Response:
    """An RFC 7807 ProblemDetails answer, as ASP.NET writes it."""
    body: dict[str, Any] = {
        "type": _PROBLEM_TYPES.get(status, "about:blank"),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
    }
    if errors is not None:
        body["errors"] = errors
    return web.Response(status=status, text=json.dumps(body), content_type="application/problem+json")


def _validation(request: web.Request, errors: dict[str, list[str]]) -> web.Response:
    return _problem(request, 400, "One or more validation errors occurred.", errors=errors)


class _Invalid(Exception):
    """A request parameter or body field is invalid; becomes a 400 validation problem."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def _query_int(request: web.Request, name: str, *, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _Invalid(name, f"The value '{raw}' is not valid for {name}.") from None


def _required_int(request: web.Request, name: str) -> int:
    value = _query_int(request, name)
    if value is None:
        raise _Invalid(name, f"The {name} field is required.")
    return value


def _query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "false"):
        return False
    if raw == "true":
        return True
    raise _Invalid(name, f"The value '{raw}' is not valid for {name}.")


def _body_object(call_json: Any) -> dict[str, Any]:
    if not isinstance(call_json, dict):
        raise _Invalid("body", "A non-empty JSON object body is required.")
    return call_json


def _body_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise _Invalid(name, f"The {name} field is required.")
    return value


def _paged(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    skip = _query_int(request, "skip", default=0) or 0
    take = _query_int(request, "take")
    if skip < 0 or (take is not None and take < 0):
        raise _Invalid("skip" if skip < 0 else "take", "Must not be negative.")
    page = items[skip:] if take is None else items[skip : skip + take]
    return web.json_response({"total": len(items), "items": page})


# -- the token endpoint -----------------------------------------------------------------------


def _oauth_error(error: str, status: int = 400, **headers: str) -> web.Response:
    return web.json_response(
        {"error": error}, status=status, headers={"Cache-Control": "no-store", **headers}
    )


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    client_id, _, client_secret = decoded.partition(":")
    return unquote(client_id), unquote(client_secret)


async def connect_token(request: web.Request) -> web.Response:
    """POST /connect/token: OAuth2 client credentials."""
    state = request.app[EMULATOR_STATE]
    if request.content_type != "application/x-www-form-urlencoded":
        return _oauth_error("invalid_request")
    form = await request.post()
    if form.get("grant_type") != "client_credentials":
        return _oauth_error("unsupported_grant_type")
    basic = _basic_credentials(request)
    if basic is not None:
        client_id, client_secret = basic
    else:
        client_id, client_secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
    good = secrets.compare_digest(
        client_id.encode(), state.options.client_id.encode()
    ) and secrets.compare_digest(client_secret.encode(), state.options.client_secret.encode())
    if not good:
        if basic is not None:
            return _oauth_error("invalid_client", 401, **{"WWW-Authenticate": "Basic"})
        return _oauth_error("invalid_client")
    scope = str(form.get("scope") or DEFAULT_SCOPE)
    return web.json_response(
        {
            "access_token": state.issue_access_token(),
            "expires_in": state.options.access_token_lifetime_s,
            "token_type": "Bearer",
            "scope": scope,
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


# -- storefronts ------------------------------------------------------------------------------


async def storefronts_get_all(request: web.Request) -> web.Response:
    """GET /storefronts: paged, filtered by ``search`` (name) and ``types``."""
    state = request.app[EMULATOR_STATE]
    search = request.query.get("search", "").lower()
    types = set(request.query.getall("types", []))
    items = [
        dto
        for _, dto in sorted(state.storefronts.items())
        if search in str(dto["name"]).lower() and (not types or dto["type"] in types)
    ]
    return _paged(request, items)


async def storefronts_get(request: web.Request) -> web.Response:
    """GET /storefronts/{id}."""
    state = request.app[EMULATOR_STATE]
    try:
        storefront_id = int(request.match_info["id"])
    except ValueError:
        return _problem(request, 404, "Not Found")
    dto = state.storefronts.get(storefront_id)
    if dto is None:
        return _problem(request, 404, "Storefront not found", f"No storefront {storefront_id}.")
    return web.json_response(dto)


# -- storefront users -------------------------------------------------------------------------


def _storefront_of(request: web.Request) -> int | web.Response:
    """The required, existing ``storefrontId``; or the answer that says why not."""
    storefront_id = _required_int(request, "storefrontId")
    if storefront_id not in request.app[EMULATOR_STATE].storefronts:
        return _problem(request, 404, "Storefront not found", f"No storefront {storefront_id}.")
    return storefront_id


def _user_not_found(request: web.Request) -> web.Response:
    return _problem(request, 404, "Storefront user not found")


async def users_get_all(request: web.Request) -> web.Response:
    """GET /storefront-users: regular users, anonymous ones too with ``includeAnonymous``."""
    state = request.app[EMULATOR_STATE]
    storefront_id = _storefront_of(request)
    if isinstance(storefront_id, web.Response):
        return storefront_id
    wanted_id = request.query.get("storefrontUserId")
    search = request.query.get("search", "").lower()
    include_anonymous = _query_bool(request, "includeAnonymous")
    items = [
        user.dto()
        for (sid, user_id), user in sorted(state.users.items())
        if sid == storefront_id
        and (wanted_id is None or user_id == wanted_id)
        and search in user_id.lower()
        and (include_anonymous or not user.is_anonymous)
    ]
    return _paged(request, items)


async def users_get(request: web.Request) -> web.Response:
    """GET /storefront-users/{id}: the id is percent-decoded from the raw path."""
    state = request.app[EMULATOR_STATE]
    storefront_id = _storefront_of(request)
    if isinstance(storefront_id, web.Response):
        return storefront_id
    # From the raw path, so an encoded "/" (%2F) in an id survives routing.
    user_id = unquote(request.raw_path.partition("?")[0].rsplit("/", 1)[1])
    user = state.users.get((storefront_id, user_id))
    if user is None:
        return _user_not_found(request)
    return web.json_response(user.dto())


async def users_create(request: web.Request) -> web.Response:
    """POST /storefront-users: 201 with the new user, 409 when the id exists."""
    state = request.app[EMULATOR_STATE]
    storefront_id = _storefront_of(request)
    if isinstance(storefront_id, web.Response):
        return storefront_id
    body = _body_object(await _json_body(request))
    user_id = _body_str(body, "storefrontUserId")
    is_anonymous = body.get("isAnonymous", False)
    if not isinstance(is_anonymous, bool):
        raise _Invalid("isAnonymous", "The isAnonymous field must be a boolean.")
    if (storefront_id, user_id) in state.users:
        return _problem(request, 409, "Storefront user already exists", "A user with this id exists.")
    user = state.add_user(storefront_id, user_id, is_anonymous=is_anonymous)
    return web.json_response(user.dto(), status=201)


async def users_get_token(request: web.Request) -> web.Response:
    """GET /storefront-users/token: the customer token as the bare text/plain body."""
    state = request.app[EMULATOR_STATE]
    storefront_id = _storefront_of(request)
    if isinstance(storefront_id, web.Response):
        return storefront_id
    user_id = request.query.get("storefrontUserId", "")
    if not user_id:
        raise _Invalid("storefrontUserId", "The storefrontUserId field is required.")
    if (storefront_id, user_id) not in state.users:
        return _user_not_found(request)
    token = state.issue_token(storefront_id, user_id)
    accept = request.headers.get("Accept", "*/*")
    if "application/json" in accept and "text/plain" not in accept and "*/*" not in accept:
        return web.json_response(token)
    return web.Response(text=token, content_type="text/plain")


async def users_merge_anonymous(request: web.Request) -> web.Response:
    """POST /storefront-users/merge-anonymous: a guest into a regular user; the guest is gone."""
    state = request.app[EMULATOR_STATE]
    storefront_id = _storefront_of(request)
    if isinstance(storefront_id, web.Response):
        return storefront_id
    body = _body_object(await _json_body(request))
    anonymous_id = _body_str(body, "anonymousStorefrontUserId")
    regular_id = _body_str(body, "regularStorefrontUserId")
    if (storefront_id, anonymous_id) in state.merged:
        return _problem(request, 409, "Anonymous user was merged already")
    anonymous = state.users.get((storefront_id, anonymous_id))
    regular = state.users.get((storefront_id, regular_id))
    if anonymous is None or regular is None:
        return _user_not_found(request)
    if not anonymous.is_anonymous or regular.is_anonymous or anonymous is regular:
        return _problem(request, 409, "Cannot merge", "Only an anonymous user merges into a regular one.")
    del state.users[(storefront_id, anonymous_id)]
    state.merged[(storefront_id, anonymous_id)] = regular_id
    return web.Response(status=200)


async def users_register(request: web.Request) -> web.Response:
    """POST /storefront-users/register: an existing anonymous user becomes a regular one."""
    state = request.app[EMULATOR_STATE]
    storefront_id = _storefront_of(request)
    if isinstance(storefront_id, web.Response):
        return storefront_id
    body = _body_object(await _json_body(request))
    user_id = _body_str(body, "storefrontUserId")
    user = state.users.get((storefront_id, user_id))
    if user is None:
        return _user_not_found(request)
    if not user.is_anonymous:
        return _problem(request, 409, "Storefront user is registered already")
    user.is_anonymous = False
    return web.json_response(user.dto())


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise _Invalid("body", "The body is not valid JSON.") from None


# -- the middleware: record, faults, bearer, tenant -------------------------------------------


@web.middleware
async def _emulate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record the call, apply faults, check the bearer and tenant, then answer."""
    if request.path.startswith("/_emulator/"):
        return await handler(request)
    state = request.app[EMULATOR_STATE]
    operation = request.match_info.route.name or UNKNOWN_OPERATION
    call = await _record(request, operation)
    state.calls.append(call)
    try:
        response = await _answer(request, handler, operation)
    except web.HTTPException as exc:
        # aiohttp's own answers (404 and 405 of the router, 413...) are raised, not returned.
        call.status = exc.status
        raise
    transport = request.transport
    # A dropped connection had no answer at all.
    call.status = None if transport is None or transport.is_closing() else response.status
    for listener in state.on_answered:
        listener(call)
    return response


async def _record(request: web.Request, operation: str) -> RecordedCall:
    raw = await request.read()
    body: Any = None
    form: dict[str, str] | None = None
    if operation == OP_TOKEN:
        posted = await request.post()
        form = {key: _REDACTED if key == "client_secret" else str(v) for key, v in posted.items()}
    elif raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
    return RecordedCall(
        operation=operation,
        method=request.method,
        path=request.raw_path.partition("?")[0],
        query=dict(request.query),
        json=body,
        time=time.time(),
        accept=request.headers.get("Accept"),
        form=form,
    )


async def _answer(request: web.Request, handler: Handler, operation: str) -> web.StreamResponse:
    state = request.app[EMULATOR_STATE]
    faults = state.faults
    if faults.matches(operation):
        if faults.delay_s > 0:
            await asyncio.sleep(faults.delay_s)
        if faults.take_failure():
            if faults.drop_connection:
                # Close without a byte of answer; aiohttp then writes nothing of the response.
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=503)
            if faults.malformed_answer:
                # What a misconfigured gateway or captive portal sends: a page, not JSON.
                return web.Response(
                    text="<html><body>Service temporarily unavailable</body></html>",
                    content_type="text/html",
                )
            status = faults.fail_status or 500
            if operation == OP_TOKEN:
                return _oauth_error("server_error", status)
            return _problem(request, status, "Injected fault")
    if operation not in (OP_TOKEN, UNKNOWN_OPERATION):
        refusal = _check_bearer(request)
        if refusal is not None:
            return refusal
    try:
        if operation != OP_TOKEN:
            tenant_id = _query_int(request, "tenantId")
            if tenant_id is not None and tenant_id != state.options.tenant_id:
                return _problem(request, 403, "Forbidden", "The tenant is not this client's.")
        return await handler(request)
    except _Invalid as exc:
        return _validation(request, {exc.name: [exc.message]})


def _check_bearer(request: web.Request) -> web.Response | None:
    """None when the bearer access token is good; else the 401 to answer."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
    if not request.app[EMULATOR_STATE].access_token_valid(token.strip()):
        return web.Response(
            status=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return None


# -- control (tests only) ---------------------------------------------------------------------


async def control_calls(request: web.Request) -> web.Response:
    """GET /_emulator/calls: the call log."""
    calls = [asdict(call) for call in request.app[EMULATOR_STATE].calls]
    return web.json_response(calls)


async def control_get_faults(request: web.Request) -> web.Response:
    """GET /_emulator/faults: the faults in force."""
    return web.json_response(request.app[EMULATOR_STATE].faults.as_json())


async def control_set_faults(request: web.Request) -> web.Response:
    """POST /_emulator/faults: replace the faults with the fields given (others default)."""
    state = request.app[EMULATOR_STATE]
    try:
        body = await request.json()
    except ValueError:
        body = None
    problem = _faults_problem(body)
    if problem is not None:
        return web.json_response({"error": problem}, status=400)
    operations = body.pop("operations", None)
    faults = Faults(operations=None if operations is None else frozenset(operations))
    state.faults = replace(faults, **body)
    return web.json_response(state.faults.as_json())


def _faults_problem(body: Any) -> str | None:
    """Why a faults document is unusable, or None."""
    if not isinstance(body, dict):
        return "expected a JSON object"
    for name, value in body.items():
        if name not in _FAULT_TYPES:
            return f"unknown key {name!r}; known: {sorted(_FAULT_TYPES)}"
        if value is None and name in _NULLABLE_FAULTS:
            continue
        if name == "operations":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return "operations: expected a list of operation names or null"
        elif not isinstance(value, _FAULT_TYPES[name]) or (
            isinstance(value, bool) and bool not in _FAULT_TYPES[name]
        ):
            return f"{name}: expected {' or '.join(t.__name__ for t in _FAULT_TYPES[name])}"
    return None


async def control_reset(request: web.Request) -> web.Response:
    """POST /_emulator/reset: seed users only, no calls, faults or access tokens."""
    request.app[EMULATOR_STATE].reset()
    return web.Response(status=204)


async def control_revoke(request: web.Request) -> web.Response:
    """POST /_emulator/revoke-access-tokens: every access token issued so far gets 401."""
    request.app[EMULATOR_STATE].revoke_access_tokens()
    return web.Response(status=204)


async def control_users(request: web.Request) -> web.Response:
    """GET /_emulator/users: every user, anonymous ones included."""
    users = [user.dto() for user in request.app[EMULATOR_STATE].users.values()]
    return web.json_response(users)


async def control_public_key(request: web.Request) -> web.Response:
    """GET /_emulator/public-key: the PEM key that verifies customer tokens."""
    return web.Response(
        body=request.app[EMULATOR_STATE].public_key_pem, content_type="application/x-pem-file"
    )


# -- the application --------------------------------------------------------------------------


def create_emulator_app(options: EmulatorOptions) -> web.Application:
    """The emulator as an aiohttp application; its state is ``app[EMULATOR_STATE]``."""
    app = web.Application(middlewares=[_emulate])
    app[EMULATOR_STATE] = EmulatorState(options)
    router = app.router
    router.add_post("/connect/token", connect_token, name=OP_TOKEN)
    api = API_PREFIX
    router.add_get(f"{api}/storefronts", storefronts_get_all, name="Storefronts_GetAll")
    router.add_get(f"{api}/storefronts/{{id}}", storefronts_get, name="Storefronts_Get")
    users = f"{api}/storefront-users"
    router.add_get(users, users_get_all, name="StorefrontUsers_GetAll")
    router.add_post(users, users_create, name="StorefrontUsers_Create")
    # Before {id}: "token" is a path of its own, as in the real API.
    router.add_get(f"{users}/token", users_get_token, name="StorefrontUsers_GetToken")
    router.add_post(f"{users}/merge-anonymous", users_merge_anonymous, name="StorefrontUsers_MergeAnonymous")
    router.add_post(f"{users}/register", users_register, name="StorefrontUsers_Register")
    # Any one segment: aiohttp's default {id} pattern refuses "{" and "}", valid in a user id.
    router.add_get(f"{users}/{{id:[^/]+}}", users_get, name="StorefrontUsers_Get")
    if options.enable_control:
        router.add_get("/_emulator/calls", control_calls)
        router.add_get("/_emulator/faults", control_get_faults)
        router.add_post("/_emulator/faults", control_set_faults)
        router.add_post("/_emulator/reset", control_reset)
        router.add_post("/_emulator/revoke-access-tokens", control_revoke)
        router.add_get("/_emulator/users", control_users)
        router.add_get("/_emulator/public-key", control_public_key)
    return app


# -- the command ------------------------------------------------------------------------------


def load_seed(path: Path, options: EmulatorOptions) -> EmulatorOptions:
    """``options`` with the storefronts and users of a seed YAML file added.

    ::

        storefronts:          # ids, or objects with id, name, status, type
          - 2
          - {id: 3, name: Outlet, status: Prod}
        users:
          - {storefront_id: 1, user_id: jane@example.com, is_anonymous: false}

    Raises ValueError naming the problem.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"seed {path}: {exc}") from exc
    if not isinstance(document, dict) or set(document) - {"storefronts", "users"}:
        raise ValueError(f"seed {path}: expected a mapping with storefronts and users")
    storefronts = list(options.storefronts)
    for index, entry in enumerate(document.get("storefronts") or []):
        try:
            storefront = SeedStorefront(id=int(entry)) if isinstance(entry, int) else SeedStorefront(**entry)
        except TypeError as exc:
            raise ValueError(f"seed {path}: storefronts[{index}]: {exc}") from None
        storefronts.append(storefront)
    users = list(options.users)
    for index, entry in enumerate(document.get("users") or []):
        try:
            users.append(SeedUser(**entry))
        except TypeError as exc:
            raise ValueError(f"seed {path}: users[{index}]: {exc}") from None
    return replace(options, storefronts=tuple(storefronts), users=tuple(users))


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    """The options of ``cc-sidecar emulator``'s command line (the seed file included)."""
    options = EmulatorOptions(
        client_id=args.client_id,
        client_secret=args.client_secret,
        tenant_id=args.tenant_id,
        storefront_ids=tuple(args.storefront_ids or (1,)),
        token_lifetime_s=args.token_lifetime_s,
        enable_control=bool(args.enable_control),
    )
    if args.seed:
        options = load_seed(Path(args.seed), options)
    return options


# Addresses that listen everywhere; a client reaches them on loopback.
_EVERY_INTERFACE = frozenset({"0.0.0.0", "::", ""})


def start_up_notes(options: EmulatorOptions, host: str, port: int) -> str:
    """What follows the listening line: the credentials accepted and a ready config section."""
    reachable = "127.0.0.1" if host in _EVERY_INTERFACE else host
    api_url = f"http://{f'[{reachable}]' if ':' in reachable else reachable}:{port}"
    storefront_ids = sorted({*options.storefront_ids, *(seed.id for seed in options.storefronts)})
    return "\n".join(
        [
            f"accepts client_id {options.client_id!r} with client_secret {options.client_secret!r}"
            f" (tenant {options.tenant_id}); storefronts: {', '.join(map(str, storefront_ids))}",
            "for the sidecar's config (storefront_id: one of the storefronts above):",
            "customers_canvas:",
            f"  api_url: {api_url}",
            f"  client_id: {options.client_id}",
            f"  client_secret: {options.client_secret}",
            f"  tenant_id: {options.tenant_id}",
        ]
    )


async def serve_emulator(options: EmulatorOptions, host: str, port: int) -> int:
    """Serve until SIGINT or SIGTERM; print the listening line once ready."""
    runner = web.AppRunner(create_emulator_app(options), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        shown_host = f"[{host}]" if ":" in host else host
        print(f"emulator listening on http://{shown_host}:{bound_port}", flush=True)
        print(start_up_notes(options, host, bound_port), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def run_emulator(args: argparse.Namespace) -> int:
    """Entry point of ``cc-sidecar emulator``; exit status 0 after SIGINT/SIGTERM, 2 on bad input."""
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve_emulator(options, args.host, args.port))
    except OSError as exc:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
