"""The Storefront API client's assumptions, checked against the emulator and the real service.

Every test runs twice: against the emulator (always) and against the real Customer's Canvas
Storefront API when these variables are set (skipped otherwise):

- ``CC_API_URL``, ``CC_CLIENT_ID``, ``CC_CLIENT_SECRET``, ``CC_STOREFRONT_ID``;
- optional ``CC_TENANT_ID``, ``CC_TOKEN_URL`` (default ``{CC_API_URL}/connect/token``), ``CC_SCOPE``.

Against the real service the tests create StorefrontUsers with fresh ids
(``cc-sidecar-contract-...``); there is no delete operation, so use a Dev storefront.
Where the facts page leaves a behaviour open (which of 404/409 a repeated merge gives, whether a
customer token has ``exp``), the assertion accepts what the facts allow.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from pydantic import SecretStr

from proxy.config.model import CustomersCanvasSettings
from proxy.emulator import EmulatorOptions
from proxy.errors import NotFound, Unauthorized, UserConflict
from proxy.metrics import Metrics
from proxy.storefront_api import StorefrontApiClient, create_api_session
from tests.fixtures.emulator import settings_for, start_emulator

REQUIRED_ENV = ("CC_API_URL", "CC_CLIENT_ID", "CC_CLIENT_SECRET", "CC_STOREFRONT_ID")
# Deliberately not the emulator's defaults, so the tenant and storefront really travel.
EMULATED_TENANT = 7
EMULATED_STOREFRONT = 12


@dataclass(frozen=True)
class Target:
    """Where the contract runs: settings for the client and the storefront to use."""

    name: str
    settings: CustomersCanvasSettings
    storefront_id: int


def real_target() -> Target:
    """The real service from the environment, or a skip naming what is missing."""
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        pytest.skip(f"set {', '.join(missing)} to run the contract against the real service")
    env = os.environ
    values: dict[str, Any] = {
        "api_url": env["CC_API_URL"],
        "client_id": env["CC_CLIENT_ID"],
        "client_secret": env["CC_CLIENT_SECRET"],
        "timeout_s": 15.0,
    }
    if env.get("CC_TENANT_ID"):
        values["tenant_id"] = int(env["CC_TENANT_ID"])
    if env.get("CC_TOKEN_URL"):
        values["token_url"] = env["CC_TOKEN_URL"]
    if env.get("CC_SCOPE"):
        values["scope"] = env["CC_SCOPE"]
    settings = CustomersCanvasSettings.model_validate(values)
    return Target("real", settings, int(env["CC_STOREFRONT_ID"]))


@pytest.fixture(params=["emulator", "real"])
async def target(request: pytest.FixtureRequest, aiohttp_server: Any) -> Target:
    """The emulator (tenant 7, storefront 12), or the real service when configured."""
    if request.param == "real":
        return real_target()
    options = EmulatorOptions(tenant_id=EMULATED_TENANT, storefront_ids=(EMULATED_STOREFRONT,))
    running = await start_emulator(aiohttp_server, options)
    settings = settings_for(running.url, tenant_id=EMULATED_TENANT, timeout_s=5.0)
    return Target("emulator", settings, EMULATED_STOREFRONT)


@pytest.fixture
async def client(target: Target) -> AsyncIterator[StorefrontApiClient]:
    """A client made the way the sidecar makes it, on its own session."""
    async with create_api_session(target.settings) as session:
        yield StorefrontApiClient(target.settings, session, Metrics())


def fresh_id(kind: str) -> str:
    """A user id no earlier run used; regular ones carry an @ to exercise path encoding."""
    suffix = uuid.uuid4().hex[:12]
    return (
        f"anon-cc-sidecar-contract-{suffix}"
        if kind == "anon"
        else f"cc-sidecar-contract-{suffix}@example.com"
    )


async def test_configured_storefront_is_listed(client: StorefrontApiClient, target: Target) -> None:
    """Storefronts_GetAll lists the configured storefront."""
    storefronts = await client.list_storefronts()
    assert target.storefront_id in {storefront.id for storefront in storefronts}


async def test_created_user_can_be_read_back(client: StorefrontApiClient, target: Target) -> None:
    """Create returns the user; Get (id percent-encoded in the path) returns the same user."""
    user_id = fresh_id("regular")
    created = await client.create_user(target.storefront_id, user_id, is_anonymous=False)
    fetched = await client.get_user(target.storefront_id, user_id)
    for user in (created, fetched):
        assert user.user_id == user_id
        assert user.storefront_id in (target.storefront_id, None)
        assert user.is_anonymous in (False, None)


async def test_missing_user_is_not_found(client: StorefrontApiClient, target: Target) -> None:
    """Get of an id never created raises NotFound."""
    with pytest.raises(NotFound):
        await client.get_user(target.storefront_id, fresh_id("regular"))


async def test_creating_an_existing_user_is_a_conflict(client: StorefrontApiClient, target: Target) -> None:
    """A second Create of the same id raises UserConflict."""
    user_id = fresh_id("anon")
    await client.create_user(target.storefront_id, user_id, is_anonymous=True)
    with pytest.raises(UserConflict):
        await client.create_user(target.storefront_id, user_id, is_anonymous=True)


async def test_ensure_user_is_idempotent(client: StorefrontApiClient, target: Target) -> None:
    """ensure_user creates a missing user and accepts an existing one."""
    user_id = fresh_id("anon")
    await client.ensure_user(target.storefront_id, user_id, is_anonymous=True)
    await client.ensure_user(target.storefront_id, user_id, is_anonymous=True)
    assert (await client.get_user(target.storefront_id, user_id)).is_anonymous in (True, None)


async def test_token_is_a_jwt_for_the_user(client: StorefrontApiClient, target: Target) -> None:
    """GetToken returns a JWT; an exp claim, when present, is a number in the future."""
    user_id = fresh_id("regular")
    await client.ensure_user(target.storefront_id, user_id, is_anonymous=False)
    token = await client.get_token(target.storefront_id, user_id)
    assert token.count(".") == 2
    claims = jwt.decode(token, options={"verify_signature": False})
    if "exp" in claims:
        assert isinstance(claims["exp"], int | float)
        assert claims["exp"] > time.time()


async def test_token_for_missing_user_is_not_found(client: StorefrontApiClient, target: Target) -> None:
    """GetToken for an id never created raises NotFound."""
    with pytest.raises(NotFound):
        await client.get_token(target.storefront_id, fresh_id("anon"))


async def test_guest_merges_into_a_customer_once(client: StorefrontApiClient, target: Target) -> None:
    """MergeAnonymous guest -> customer succeeds; repeating it is final (NotFound or UserConflict)."""
    guest, customer = fresh_id("anon"), fresh_id("regular")
    await client.create_user(target.storefront_id, guest, is_anonymous=True)
    await client.create_user(target.storefront_id, customer, is_anonymous=False)
    await client.merge_anonymous(target.storefront_id, guest, customer)
    with pytest.raises((NotFound, UserConflict)):
        await client.merge_anonymous(target.storefront_id, guest, customer)


async def test_merge_into_a_missing_customer_is_not_found(
    client: StorefrontApiClient, target: Target
) -> None:
    """MergeAnonymous into a regular id never created raises NotFound."""
    guest = fresh_id("anon")
    await client.create_user(target.storefront_id, guest, is_anonymous=True)
    with pytest.raises(NotFound):
        await client.merge_anonymous(target.storefront_id, guest, fresh_id("regular"))


async def test_register_makes_a_guest_regular(client: StorefrontApiClient, target: Target) -> None:
    """Register turns an existing anonymous user into a regular one."""
    guest = fresh_id("anon")
    await client.create_user(target.storefront_id, guest, is_anonymous=True)
    user = await client.register(target.storefront_id, guest)
    assert user.is_anonymous in (False, None)
    assert (await client.get_user(target.storefront_id, guest)).is_anonymous is False


async def test_wrong_client_secret_is_unauthorized(target: Target) -> None:
    """A wrong client secret is refused by the token endpoint: Unauthorized."""
    settings = target.settings.model_copy(update={"client_secret": SecretStr("wrong")})
    async with create_api_session(settings) as session:
        with pytest.raises(Unauthorized):
            await StorefrontApiClient(settings, session, Metrics()).list_storefronts()
