"""The Storefront API client against the emulator: operations, errors, access token, resilience."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import aiohttp
import jwt
import pytest

from proxy.config.model import CustomersCanvasSettings
from proxy.emulator import EmulatorOptions, SeedUser
from proxy.errors import (
    BadResponse,
    CircuitOpen,
    NotFound,
    StorefrontUnavailable,
    Unauthorized,
    UserConflict,
)
from proxy.log import RepeatedWarningFilter
from proxy.metrics import Metrics
from proxy.storefront_api import (
    CircuitBreaker,
    Storefront,
    StorefrontApiClient,
    StorefrontUser,
    create_api_session,
)
from tests.fixtures.emulator import ManualClock, RunningEmulator, settings_for, start_emulator

GET = "StorefrontUsers_Get"
CREATE = "StorefrontUsers_Create"
GET_TOKEN = "StorefrontUsers_GetToken"
MERGE = "StorefrontUsers_MergeAnonymous"
REGISTER = "StorefrontUsers_Register"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(
    api_settings: CustomersCanvasSettings,
    api_session: aiohttp.ClientSession,
    metrics: Metrics,
    manual_clock: ManualClock,
) -> StorefrontApiClient:
    return StorefrontApiClient(api_settings, api_session, metrics, clock=manual_clock, retry_backoff_s=0.01)


def counted(metrics: Metrics, operation: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "cc_sidecar_api_calls_total", {"operation": operation, "outcome": outcome}
    )
    return value or 0.0


def breaker_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("cc_sidecar_api_breaker_open")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- operations ---------------------------------------------------------------------------------


async def test_get_user_returns_the_dto(client: StorefrontApiClient, emulator: RunningEmulator) -> None:
    """get_user parses the StorefrontUserDto of an existing user."""
    emulator.state.add_user(1, "jane@example.com", is_anonymous=False)
    user = await client.get_user(1, "jane@example.com")
    assert user == StorefrontUser(
        user_id="jane@example.com", tenant_id=1, storefront_id=1, is_anonymous=False
    )


async def test_user_id_is_percent_encoded_once_in_the_path(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """The user id travels percent-encoded (john%40wood.com), with storefrontId and tenantId."""
    emulator.state.add_user(1, "john@wood.com", is_anonymous=False)
    await client.get_user(1, "john@wood.com")
    [call] = emulator.state.calls_of(GET)
    assert call.path == "/api/storefront/v1/storefront-users/john%40wood.com"
    assert call.query == {"storefrontId": "1", "tenantId": "1"}


@pytest.mark.parametrize(
    ("user_id", "encoded"),
    [("a/b c?d#e", "a%2Fb%20c%3Fd%23e"), ("x%41y", "x%2541y"), ("ü+&=", "%C3%BC%2B%26%3D")],
)
async def test_awkward_user_ids_round_trip(
    client: StorefrontApiClient, emulator: RunningEmulator, user_id: str, encoded: str
) -> None:
    """Slashes, percent signs, spaces and non-ASCII are encoded exactly once and come back intact."""
    emulator.state.add_user(1, user_id, is_anonymous=True)
    user = await client.get_user(1, user_id)
    assert user.user_id == user_id
    assert emulator.state.calls_of(GET)[0].path == f"/api/storefront/v1/storefront-users/{encoded}"


@pytest.mark.parametrize(("user_id", "encoded"), [(".", "%2E"), ("..", "%2E%2E"), ("...", "%2E%2E%2E")])
async def test_dots_only_user_ids_are_percent_encoded(
    client: StorefrontApiClient, emulator: RunningEmulator, user_id: str, encoded: str
) -> None:
    """A user id of dots alone is sent as %2E..., never as a dot-segment a server would normalise away."""
    emulator.state.add_user(1, user_id, is_anonymous=False)
    user = await client.get_user(1, user_id)
    assert user.user_id == user_id
    [call] = emulator.state.calls_of(GET)
    assert call.path == f"/api/storefront/v1/storefront-users/{encoded}"


async def test_get_missing_user_raises_not_found(client: StorefrontApiClient, metrics: Metrics) -> None:
    """A 404 from Get is NotFound with status 404, counted as not_found."""
    with pytest.raises(NotFound) as caught:
        await client.get_user(1, "nobody")
    assert caught.value.status == 404
    assert caught.value.operation == GET
    assert counted(metrics, GET, "not_found") == 1


async def test_create_user_sends_the_documented_body(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics
) -> None:
    """Create posts storefrontUserId and isAnonymous and returns the new user."""
    user = await client.create_user(2, "anon-1", is_anonymous=True)
    assert user == StorefrontUser(user_id="anon-1", tenant_id=1, storefront_id=2, is_anonymous=True)
    [call] = emulator.state.calls_of(CREATE)
    assert call.json == {"storefrontUserId": "anon-1", "isAnonymous": True}
    assert call.query == {"storefrontId": "2", "tenantId": "1"}
    assert counted(metrics, CREATE, "ok") == 1


async def test_create_existing_user_raises_user_conflict(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics
) -> None:
    """A 409 from Create is UserConflict, counted as conflict."""
    emulator.state.add_user(1, "kim", is_anonymous=False)
    with pytest.raises(UserConflict):
        await client.create_user(1, "kim", is_anonymous=False)
    assert counted(metrics, CREATE, "conflict") == 1


async def test_ensure_user_creates_a_missing_user(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """ensure_user on a missing user: one Get (404), one Create with the given isAnonymous."""
    await client.ensure_user(1, "new@example.com", is_anonymous=False)
    assert [call.operation for call in emulator.state.calls if call.operation != "token"] == [
        GET,
        CREATE,
    ]
    assert emulator.state.users[(1, "new@example.com")].is_anonymous is False


async def test_ensure_user_leaves_an_existing_user_alone(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """ensure_user on an existing user makes one Get and no Create."""
    emulator.state.add_user(1, "old@example.com", is_anonymous=False)
    await client.ensure_user(1, "old@example.com", is_anonymous=False)
    assert emulator.state.count(GET) == 1
    assert emulator.state.count(CREATE) == 0


async def test_ensure_user_treats_a_racing_creates_409_as_exists(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """Get says 404, then someone else creates the user: Create's 409 makes ensure_user succeed."""
    emulator.state.add_user(1, "raced", is_anonymous=True)
    # The Get answers 404 as it would have just before the other sidecar's Create.
    emulator.state.fail_operation(GET, status=404, times=1)
    await client.ensure_user(1, "raced", is_anonymous=True)
    assert emulator.state.count(CREATE) == 1
    assert emulator.state.calls_of(CREATE)[0].status == 409


async def test_get_token_returns_the_bare_jwt(client: StorefrontApiClient, emulator: RunningEmulator) -> None:
    """GetToken asks for text/plain and returns the JWT the emulator signed for that user."""
    emulator.state.add_user(1, "jane@example.com", is_anonymous=False)
    token = await client.get_token(1, "jane@example.com")
    claims = jwt.decode(token, emulator.state.public_key_pem, algorithms=["RS256"])
    assert claims["sub"] == "jane@example.com"
    assert claims["storefront_id"] == 1
    [call] = emulator.state.calls_of(GET_TOKEN)
    assert call.accept == "text/plain"
    assert call.query == {"storefrontUserId": "jane@example.com", "storefrontId": "1", "tenantId": "1"}


async def test_get_token_strips_whitespace(client: StorefrontApiClient, emulator: RunningEmulator) -> None:
    """Whitespace around the token body is stripped."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    emulator.state.faults.token_text = "  aaa.bbb.ccc\r\n"
    assert await client.get_token(1, "u") == "aaa.bbb.ccc"


@pytest.mark.parametrize("body", ["", "  \n"])
async def test_empty_token_is_a_bad_response(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics, body: str
) -> None:
    """An empty (or blank) GetToken body is BadResponse, counted as bad_response."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    emulator.state.faults.token_text = body
    with pytest.raises(BadResponse):
        await client.get_token(1, "u")
    assert counted(metrics, GET_TOKEN, "bad_response") == 1


async def test_get_token_for_missing_user_raises_not_found(client: StorefrontApiClient) -> None:
    """GetToken for a user that does not exist is NotFound."""
    with pytest.raises(NotFound):
        await client.get_token(1, "ghost")


async def test_merge_anonymous_moves_the_guest_and_is_final_once_done(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """Merge sends both ids; afterwards the guest is gone and a second merge is UserConflict."""
    emulator.state.add_user(1, "anon-x", is_anonymous=True)
    emulator.state.add_user(1, "jane", is_anonymous=False)
    await client.merge_anonymous(1, "anon-x", "jane")
    assert emulator.state.calls_of(MERGE)[0].json == {
        "anonymousStorefrontUserId": "anon-x",
        "regularStorefrontUserId": "jane",
    }
    with pytest.raises(NotFound):
        await client.get_user(1, "anon-x")
    with pytest.raises(UserConflict):
        await client.merge_anonymous(1, "anon-x", "jane")


async def test_merge_into_missing_regular_user_raises_not_found(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """MergeAnonymous into a regular user that does not exist is NotFound."""
    emulator.state.add_user(1, "anon-y", is_anonymous=True)
    with pytest.raises(NotFound):
        await client.merge_anonymous(1, "anon-y", "nobody")


async def test_register_turns_a_guest_into_a_regular_user(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """Register returns the user, now not anonymous; registering again is UserConflict."""
    emulator.state.add_user(1, "anon-z", is_anonymous=True)
    user = await client.register(1, "anon-z")
    assert user == StorefrontUser(user_id="anon-z", tenant_id=1, storefront_id=1, is_anonymous=False)
    assert emulator.state.calls_of(REGISTER)[0].json == {"storefrontUserId": "anon-z"}
    with pytest.raises(UserConflict):
        await client.register(1, "anon-z")


async def test_list_storefronts_returns_the_accounts_storefronts(
    client: StorefrontApiClient,
) -> None:
    """Storefronts_GetAll: both emulated storefronts, of type Custom in tenant 1."""
    storefronts = await client.list_storefronts()
    assert storefronts == [
        Storefront(id=1, tenant_id=1, name="Storefront 1", type="Custom", status="Dev"),
        Storefront(id=2, tenant_id=1, name="Storefront 2", type="Custom", status="Dev"),
    ]


async def test_list_storefronts_pages_through_skip_and_take(aiohttp_server: Any, metrics: Metrics) -> None:
    """150 storefronts come back complete from two pages: skip 0 and skip 100, take 100."""
    running = await start_emulator(aiohttp_server, EmulatorOptions(storefront_ids=tuple(range(1, 151))))
    settings = settings_for(running.url)
    async with create_api_session(settings) as session:
        storefronts = await StorefrontApiClient(settings, session, metrics).list_storefronts()
    assert [storefront.id for storefront in storefronts] == list(range(1, 151))
    pages = running.state.calls_of("Storefronts_GetAll")
    assert [(call.query["skip"], call.query["take"]) for call in pages] == [("0", "100"), ("100", "100")]


async def test_unknown_storefront_raises_not_found(client: StorefrontApiClient) -> None:
    """A storefrontId the tenant lacks is NotFound."""
    with pytest.raises(NotFound):
        await client.get_user(99, "jane")


async def test_wrong_tenant_raises_unauthorized(emulator: RunningEmulator, metrics: Metrics) -> None:
    """A tenantId that is not the client's (403) is Unauthorized, counted as unauthorized."""
    settings = settings_for(emulator.url, tenant_id=2)
    async with create_api_session(settings) as session:
        with pytest.raises(Unauthorized) as caught:
            await StorefrontApiClient(settings, session, metrics).get_user(1, "jane")
    assert caught.value.status == 403
    assert counted(metrics, GET, "unauthorized") == 1


async def test_other_4xx_is_a_bad_response(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics
) -> None:
    """A 400 from an operation is BadResponse with its status."""
    emulator.state.fail_operation(CREATE, status=400)
    with pytest.raises(BadResponse) as caught:
        await client.create_user(1, "u", is_anonymous=True)
    assert caught.value.status == 400
    assert counted(metrics, CREATE, "bad_response") == 1


async def test_html_where_json_belongs_is_a_bad_response(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """A 200 HTML page instead of the StorefrontUserDto is BadResponse."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    emulator.state.faults.malformed_answer = True
    emulator.state.faults.operations = frozenset({GET})
    with pytest.raises(BadResponse, match="not JSON"):
        await client.get_user(1, "u")


async def test_warn_missing_storefronts_names_each_missing_id(
    client: StorefrontApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning per configured storefront the account lacks, none for those it has."""
    with caplog.at_level(logging.WARNING, logger="proxy.storefront_api"):
        await client.warn_missing_storefronts([1, 7, 2, 9])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("storefront 7 is not among the 2 storefronts")
    assert warnings[1].startswith("storefront 9 is not among the 2 storefronts")


async def test_each_missing_storefront_warning_is_written_even_when_warnings_are_sampled(
    client: StorefrontApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The start-up warnings of two missing storefronts share a message but both pass the sampling filter."""
    repeats = RepeatedWarningFilter()
    with caplog.at_level(logging.WARNING, logger="proxy.storefront_api"):
        await client.warn_missing_storefronts([7, 9])
    assert [repeats.filter(r) for r in caplog.records if r.levelno == logging.WARNING] == [True, True]


async def test_warn_missing_storefronts_survives_the_api_being_down(
    client: StorefrontApiClient, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """With the API failing, the start-up check logs one warning and returns without raising."""
    emulator.state.fail_all(status=503)
    with caplog.at_level(logging.WARNING, logger="proxy.storefront_api"):
        await client.warn_missing_storefronts([1])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("could not check the configured storefronts")


# -- the access token ---------------------------------------------------------------------------


async def test_token_request_sends_client_credentials_form(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """The token call posts grant_type, client_id and client_secret, and no scope unless set."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    await client.get_user(1, "u")
    [call] = emulator.state.calls_of("token")
    assert call.method == "POST"
    assert call.path == "/connect/token"
    assert call.form == {
        "grant_type": "client_credentials",
        "client_id": "demo",
        "client_secret": "<redacted>",
    }


async def test_configured_scope_is_requested(emulator: RunningEmulator, metrics: Metrics) -> None:
    """A configured scope is sent as the scope form field."""
    settings = settings_for(emulator.url, scope="StorefrontUsers_full")
    async with create_api_session(settings) as session:
        await StorefrontApiClient(settings, session, metrics).list_storefronts()
    assert emulator.state.calls_of("token")[0].form == {
        "grant_type": "client_credentials",
        "client_id": "demo",
        "client_secret": "<redacted>",
        "scope": "StorefrontUsers_full",
    }


async def test_wrong_secret_raises_unauthorized_without_the_secret(
    emulator: RunningEmulator, metrics: Metrics
) -> None:
    """invalid_client from the token endpoint is Unauthorized; the message names no secret."""
    settings = settings_for(emulator.url, client_secret="wrong-secret-value")
    async with create_api_session(settings) as session:
        with pytest.raises(Unauthorized) as caught:
            await StorefrontApiClient(settings, session, metrics).get_user(1, "u")
    assert str(caught.value) == (
        "token: the token endpoint refused the client credentials (invalid_client) (HTTP 400)"
    )
    assert counted(metrics, "token", "unauthorized") == 1
    assert counted(metrics, GET, "unauthorized") == 1
    assert emulator.state.count(GET) == 0


async def test_token_endpoint_failure_is_unavailable(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics
) -> None:
    """A 500 from the token endpoint makes the call StorefrontUnavailable; it is not retried."""
    emulator.state.fail_operation("token", status=500, times=None)
    with pytest.raises(StorefrontUnavailable):
        await client.get_user(1, "u")
    assert emulator.state.count("token") == 1
    assert counted(metrics, "token", "unavailable") == 1


async def test_access_token_is_reused_until_its_margin(
    client: StorefrontApiClient, emulator: RunningEmulator, manual_clock: ManualClock
) -> None:
    """One token request serves calls until expires_in less 60 s; then exactly one more."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    await client.get_user(1, "u")
    manual_clock.advance(3600 - 60 - 1)
    await client.get_user(1, "u")
    assert emulator.state.count("token") == 1
    manual_clock.advance(1)
    await client.get_user(1, "u")
    await client.get_user(1, "u")
    assert emulator.state.count("token") == 2


async def test_short_lived_access_token_is_renewed_at_half_its_life(
    aiohttp_server: Any, metrics: Metrics, manual_clock: ManualClock
) -> None:
    """With expires_in 100 s the margin is 50 s, not 60 s."""
    running = await start_emulator(aiohttp_server, EmulatorOptions(access_token_lifetime_s=100))
    settings = settings_for(running.url)
    async with create_api_session(settings) as session:
        client = StorefrontApiClient(settings, session, metrics, clock=manual_clock)
        await client.list_storefronts()
        manual_clock.advance(49)
        await client.list_storefronts()
        assert running.state.count("token") == 1
        manual_clock.advance(1)
        await client.list_storefronts()
    assert running.state.count("token") == 2


async def test_401_mid_session_renews_the_access_token_once_and_retries(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics
) -> None:
    """Revoked access tokens: the call gets 401, one new token request, and the retry succeeds."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    await client.get_user(1, "u")
    emulator.state.revoke_access_tokens()
    user = await client.get_user(1, "u")
    assert user.user_id == "u"
    assert emulator.state.count("token") == 2
    assert [call.status for call in emulator.state.calls_of(GET)] == [200, 401, 200]
    assert counted(metrics, GET, "ok") == 2


async def test_401_after_a_fresh_token_raises_unauthorized(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics
) -> None:
    """A 401 that persists with a new access token is Unauthorized after exactly one retry."""
    emulator.state.fail_operation(GET, status=401, times=None)
    with pytest.raises(Unauthorized):
        await client.get_user(1, "u")
    assert emulator.state.count(GET) == 2
    assert emulator.state.count("token") == 2
    assert counted(metrics, GET, "unauthorized") == 1


async def test_401_on_a_post_is_retried_with_a_new_token(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """Create refused with 401 (nothing done) goes once more with a new token and succeeds."""
    await client.list_storefronts()
    emulator.state.revoke_access_tokens()
    await client.create_user(1, "after-revoke", is_anonymous=True)
    assert [call.status for call in emulator.state.calls_of(CREATE)] == [401, 201]


async def test_100_concurrent_calls_share_one_token_request(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """100 concurrent calls that all need the access token cause exactly one token request."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    users = await asyncio.gather(*(client.get_user(1, "u") for _ in range(100)))
    assert len(users) == 100
    assert emulator.state.count("token") == 1
    assert emulator.state.count(GET) == 100


async def test_concurrent_401s_cause_one_new_token_request(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """20 calls that all hit the revoked token share one renewal."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    await client.get_user(1, "u")
    emulator.state.revoke_access_tokens()
    await asyncio.gather(*(client.get_user(1, "u") for _ in range(20)))
    assert emulator.state.count("token") == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_token_fetch(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """One of two callers waiting for the access token is cancelled; the other gets its answer."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    emulator.state.delay(0.2, operations=["token"])
    first = asyncio.create_task(client.get_user(1, "u"))
    second = asyncio.create_task(client.get_user(1, "u"))
    await asyncio.sleep(0.05)
    first.cancel()
    user = await second
    assert user.user_id == "u"
    assert first.cancelled()
    assert emulator.state.count("token") == 1


# -- retries and timeouts -----------------------------------------------------------------------


async def test_get_is_retried_once_after_a_5xx(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics
) -> None:
    """One 500 on Get, then the retry succeeds: one ok outcome."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    emulator.state.fail_operation(GET, status=500, times=1)
    assert (await client.get_user(1, "u")).user_id == "u"
    assert emulator.state.count(GET) == 2
    assert counted(metrics, GET, "ok") == 1


async def test_get_gives_up_after_two_attempts(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics
) -> None:
    """A Get that keeps failing with 502 is StorefrontUnavailable after exactly two attempts."""
    emulator.state.fail_operation(GET, status=502, times=None)
    with pytest.raises(StorefrontUnavailable) as caught:
        await client.get_user(1, "u")
    assert caught.value.status == 502
    assert emulator.state.count(GET) == 2
    assert counted(metrics, GET, "unavailable") == 1


@pytest.mark.parametrize("operation", [CREATE, MERGE])
async def test_posts_are_not_retried_after_a_5xx(
    client: StorefrontApiClient, emulator: RunningEmulator, operation: str
) -> None:
    """Create and MergeAnonymous answered 500 are not sent again (they may have taken effect)."""
    emulator.state.add_user(1, "anon", is_anonymous=True)
    emulator.state.add_user(1, "reg", is_anonymous=False)
    emulator.state.fail_operation(operation, status=500, times=None)
    call = (
        client.create_user(1, "new", is_anonymous=True)
        if operation == CREATE
        else client.merge_anonymous(1, "anon", "reg")
    )
    with pytest.raises(StorefrontUnavailable):
        await call
    assert emulator.state.count(operation) == 1


async def test_post_dropped_after_sending_is_not_retried(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics
) -> None:
    """A Create whose connection closes without an answer is not sent again."""
    await client.list_storefronts()
    emulator.state.drop_connections(operations=[CREATE])
    with pytest.raises(StorefrontUnavailable, match="closed the connection"):
        await client.create_user(1, "dropped", is_anonymous=True)
    assert emulator.state.count(CREATE) == 1
    assert counted(metrics, CREATE, "unavailable") == 1


async def test_refused_connection_is_retried_even_for_a_post(
    emulator: RunningEmulator, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing was sent when the connection is refused, so Create is tried twice, then unavailable."""
    port = closed_port()
    settings = settings_for(f"http://127.0.0.1:{port}", token_url=f"{emulator.url}/connect/token")
    async with create_api_session(settings) as session:
        client = StorefrontApiClient(settings, session, metrics, retry_backoff_s=0.01)
        with (
            caplog.at_level(logging.INFO, logger="proxy.storefront_api"),
            pytest.raises(StorefrontUnavailable, match=f"cannot connect to 127.0.0.1:{port}"),
        ):
            await client.create_user(1, "u", is_anonymous=True)
    retries = [r for r in caplog.records if r.getMessage().startswith("retrying after cannot connect")]
    assert len(retries) == 1
    assert counted(metrics, CREATE, "unavailable") == 1


async def test_slow_api_fails_within_the_timeout(emulator: RunningEmulator, metrics: Metrics) -> None:
    """A Get held back for 2 s fails after timeout_s (0.3 s) as StorefrontUnavailable, outcome timeout."""
    settings = settings_for(emulator.url, timeout_s=0.3)
    emulator.state.delay(2.0, operations=[GET])
    async with create_api_session(settings) as session:
        client = StorefrontApiClient(settings, session, metrics)
        await client.list_storefronts()
        started = time.monotonic()
        with pytest.raises(StorefrontUnavailable, match="timed out"):
            await client.get_user(1, "u")
        elapsed = time.monotonic() - started
    # At its timeout, not at the API's answer 2 s later (the upper bound leaves a busy machine room).
    assert 0.3 <= elapsed < 1.0
    assert counted(metrics, GET, "timeout") == 1


# -- the circuit breaker ------------------------------------------------------------------------


async def test_breaker_opens_after_consecutive_failures_and_holds_calls_back(
    client: StorefrontApiClient, emulator: RunningEmulator, metrics: Metrics
) -> None:
    """Three failing calls open the circuit: the fourth raises CircuitOpen with no call made."""
    emulator.state.fail_all(status=500)
    for _ in range(3):
        with pytest.raises(StorefrontUnavailable) as caught:
            await client.list_storefronts()
        assert not isinstance(caught.value, CircuitOpen)
    assert breaker_gauge(metrics) == 1
    calls_before = len(emulator.state.calls)
    started = time.monotonic()
    with pytest.raises(CircuitOpen):
        await client.get_user(1, "u")
    # No call made (the count below says so); the time only shows nothing waited for one.
    assert time.monotonic() - started < 0.5
    assert len(emulator.state.calls) == calls_before
    assert counted(metrics, GET, "circuit_open") == 1


async def test_refused_credentials_open_the_breaker(emulator: RunningEmulator, metrics: Metrics) -> None:
    """Wrong client credentials count as failures: after three, calls are held back without a request."""
    settings = settings_for(emulator.url, client_secret="wrong-secret-value")
    async with create_api_session(settings) as session:
        client = StorefrontApiClient(settings, session, metrics)
        for _ in range(3):
            with pytest.raises(Unauthorized):
                await client.get_user(1, "u")
        assert emulator.state.count("token") == 3
        with pytest.raises(CircuitOpen):
            await client.get_user(1, "u")
    assert emulator.state.count("token") == 3
    assert breaker_gauge(metrics) == 1


async def test_probe_after_open_s_closes_the_breaker(
    client: StorefrontApiClient,
    emulator: RunningEmulator,
    metrics: Metrics,
    manual_clock: ManualClock,
) -> None:
    """After open_s one probe goes through; its success closes the circuit for every call."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    emulator.state.fail_all(status=500)
    for _ in range(3):
        with pytest.raises(StorefrontUnavailable):
            await client.get_user(1, "u")
    emulator.state.clear_faults()
    manual_clock.advance(0.49)
    with pytest.raises(CircuitOpen):
        await client.get_user(1, "u")
    manual_clock.advance(0.01)
    assert (await client.get_user(1, "u")).user_id == "u"
    assert breaker_gauge(metrics) == 0
    assert (await client.get_user(1, "u")).user_id == "u"


async def test_an_outage_is_logged_once_when_it_begins_and_once_when_it_ends(
    client: StorefrontApiClient,
    emulator: RunningEmulator,
    metrics: Metrics,
    manual_clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Open: one warning; held-back calls and a failed probe: none; closed: one with the pages served without a token."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    emulator.state.fail_all(status=500)
    with caplog.at_level(logging.DEBUG, logger="proxy.storefront_api"):
        for _ in range(3):
            with pytest.raises(StorefrontUnavailable):
                await client.get_user(1, "u")
        for _ in range(30):
            with pytest.raises(CircuitOpen):
                await client.get_user(1, "u")
            metrics.token_unavailable.labels("main").inc()  # what the handler counts per such page
        manual_clock.advance(0.5)
        with pytest.raises(StorefrontUnavailable):
            await client.get_user(1, "u")  # the probe fails: still the same outage
        emulator.state.clear_faults()
        manual_clock.advance(0.5)
        await client.get_user(1, "u")
    warnings = [
        (record.getMessage(), getattr(record, "pages_without_token", None))
        for record in caplog.records
        if record.name == "proxy.storefront_api" and record.levelno == logging.WARNING
    ]
    assert warnings == [
        (
            "Storefront API failed 3 times in a row; circuit open (a probe every 0.5 s until it answers)",
            None,
        ),
        (
            "Storefront API answers again; circuit closed after 1.0 s open,"
            " 30 editor pages served without a token meanwhile",
            30,
        ),
    ]


async def test_failed_probe_reopens_the_breaker(
    client: StorefrontApiClient,
    emulator: RunningEmulator,
    metrics: Metrics,
    manual_clock: ManualClock,
) -> None:
    """A failing probe opens the circuit for another open_s, without further calls meanwhile."""
    emulator.state.fail_all(status=500)
    for _ in range(3):
        with pytest.raises(StorefrontUnavailable):
            await client.get_user(1, "u")
    manual_clock.advance(0.5)
    with pytest.raises(StorefrontUnavailable) as caught:
        await client.get_user(1, "u")
    assert not isinstance(caught.value, CircuitOpen)
    calls_before = len(emulator.state.calls)
    manual_clock.advance(0.4)
    with pytest.raises(CircuitOpen):
        await client.get_user(1, "u")
    assert len(emulator.state.calls) == calls_before
    assert breaker_gauge(metrics) == 1


async def test_only_one_probe_at_a_time(
    client: StorefrontApiClient, emulator: RunningEmulator, manual_clock: ManualClock
) -> None:
    """While the half-open probe is in flight, other calls are still held back."""
    emulator.state.add_user(1, "u", is_anonymous=True)
    emulator.state.fail_all(status=500)
    for _ in range(3):
        with pytest.raises(StorefrontUnavailable):
            await client.get_user(1, "u")
    emulator.state.delay(0.1, operations=[GET])
    manual_clock.advance(0.5)
    probe = asyncio.create_task(client.get_user(1, "u"))
    await asyncio.sleep(0.03)
    with pytest.raises(CircuitOpen):
        await client.get_user(1, "u")
    assert (await probe).user_id == "u"
    assert (await client.get_user(1, "u")).user_id == "u"


async def test_not_found_and_conflict_are_successes_for_the_breaker(
    client: StorefrontApiClient, emulator: RunningEmulator
) -> None:
    """Two failures, a 404, two failures: the circuit stays closed (the service answered)."""
    emulator.state.add_user(1, "exists", is_anonymous=True)
    for _ in range(2):
        emulator.state.fail_operation(GET, status=500, times=2)
        with pytest.raises(StorefrontUnavailable):
            await client.get_user(1, "u")
    emulator.state.clear_faults()
    with pytest.raises(UserConflict):
        await client.create_user(1, "exists", is_anonymous=True)
    for _ in range(2):
        emulator.state.fail_operation(GET, status=500, times=2)
        with pytest.raises(StorefrontUnavailable):
            await client.get_user(1, "u")
    assert not client.breaker.is_open


async def test_callers_giving_up_on_a_slow_api_open_the_breaker(
    emulator: RunningEmulator, metrics: Metrics
) -> None:
    """Calls cancelled by the caller's own deadline after half of timeout_s count as failures."""
    settings = settings_for(emulator.url, timeout_s=0.2)
    async with create_api_session(settings) as session:
        client = StorefrontApiClient(settings, session, metrics)
        await client.list_storefronts()
        emulator.state.delay(1.0, operations=[GET])
        for _ in range(3):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.15):
                    await client.get_user(1, "u")
        assert client.breaker.is_open
        with pytest.raises(CircuitOpen):
            await client.get_user(1, "u")
    assert counted(metrics, GET, "timeout") == 3


def test_breaker_abandoned_probe_lets_the_next_call_probe() -> None:
    """A probe cancelled early frees the half-open slot for the next call."""
    clock = ManualClock()
    breaker = CircuitBreaker(1, 10.0, clock=clock)
    breaker.failed(probe=False)
    clock.advance(10)
    assert breaker.admit("op") is True
    breaker.abandoned(probe=True)
    assert breaker.admit("op") is True
    breaker.succeeded(probe=True)
    assert breaker.admit("op") is False
    assert not breaker.is_open


def test_breaker_logs_the_number_of_failures_that_opened_it(caplog: pytest.LogCaptureFixture) -> None:
    """The warning of a circuit opening names the real count of consecutive failures."""
    breaker = CircuitBreaker(3, 10.0, clock=ManualClock())
    with caplog.at_level(logging.WARNING, logger="proxy.storefront_api"):
        for _ in range(3):
            breaker.failed(probe=False)
    assert [r.getMessage() for r in caplog.records] == [
        "Storefront API failed 3 times in a row; circuit open (a probe every 10.0 s until it answers)"
    ]


# -- secrets ------------------------------------------------------------------------------------


async def test_no_secret_or_token_reaches_a_log_line(
    emulator: RunningEmulator, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """Across token fetches, a 401 renewal, retries and failures no log line carries a secret."""
    settings = settings_for(emulator.url)
    emulator.state.add_user(1, "u", is_anonymous=True)
    seen_access_tokens: set[str] = set()
    async with create_api_session(settings) as session:
        client = StorefrontApiClient(settings, session, metrics, retry_backoff_s=0.01)
        with caplog.at_level(logging.DEBUG):
            await client.get_user(1, "u")
            seen_access_tokens |= set(emulator.state.access_tokens)
            emulator.state.revoke_access_tokens()
            token = await client.get_token(1, "u")
            seen_access_tokens |= set(emulator.state.access_tokens)
            emulator.state.fail_operation(GET, status=500, times=1)
            await client.get_user(1, "u")
            await client.warn_missing_storefronts([5])
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert caplog.records
    assert len(seen_access_tokens) == 2
    for secret in (*seen_access_tokens, token, "demo-secret"):
        assert secret not in text


async def test_create_api_session_has_explicit_timeouts_and_no_cookies() -> None:
    """The session: total = timeout_s, connect = half of it, a cookie jar that keeps nothing."""
    session = create_api_session(settings_for("http://127.0.0.1:1", timeout_s=4.0))
    try:
        assert session.timeout.total == 4.0
        assert session.timeout.connect == 2.0
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
    finally:
        await session.close()


async def test_seeded_users_exist_for_the_client(aiohttp_server: Any, metrics: Metrics) -> None:
    """Users given in EmulatorOptions exist from the start."""
    running = await start_emulator(
        aiohttp_server, EmulatorOptions(users=(SeedUser(1, "seeded@example.com"),))
    )
    settings = settings_for(running.url)
    async with create_api_session(settings) as session:
        user = await StorefrontApiClient(settings, session, metrics).get_user(1, "seeded@example.com")
    assert user.is_anonymous is False
