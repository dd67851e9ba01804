"""The Storefront API emulator over raw HTTP: the statuses and shapes of the facts page, faults,
control endpoints, seeding and the ``emulator`` command."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from yarl import URL

from proxy.cli import main
from proxy.config import parse_settings
from proxy.emulator import EmulatorOptions, load_seed, start_up_notes
from tests.fixtures.emulator import RunningEmulator, start_emulator

REPO = Path(__file__).resolve().parents[2]
USERS = "/api/storefront/v1/storefront-users"
STOREFRONTS = "/api/storefront/v1/storefronts"
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}


class Api:
    """Raw HTTP to the emulator with a valid access token, tenant 1 unless told otherwise."""

    def __init__(self, emulator: RunningEmulator, session: aiohttp.ClientSession) -> None:
        self.emulator = emulator
        self.session = session
        self.access_token = ""

    async def login(self) -> None:
        form = {"grant_type": "client_credentials", "client_id": "demo", "client_secret": "demo-secret"}
        async with self.session.post(f"{self.emulator.url}/connect/token", data=form) as response:
            assert response.status == 200
            self.access_token = (await response.json())["access_token"]

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | list[tuple[str, Any]] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> tuple[int, str, bytes]:
        sent = dict(headers or {})
        if auth:
            sent.setdefault("Authorization", f"Bearer {self.access_token}")
        url = URL(self.emulator.url + path, encoded=True)
        async with self.session.request(method, url, params=params, json=body, headers=sent) as response:
            return response.status, response.content_type, await response.read()


@pytest.fixture
async def api(emulator: RunningEmulator) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        client = Api(emulator, session)
        await client.login()
        yield client


async def create(api: Api, user_id: str, *, anonymous: bool, storefront: int = 1) -> None:
    status, _, _ = await api.call(
        "POST",
        USERS,
        params={"storefrontId": storefront},
        body={"storefrontUserId": user_id, "isAnonymous": anonymous},
    )
    assert status == 201


def problem(content_type: str, body: bytes, status: int) -> dict[str, Any]:
    assert content_type == "application/problem+json"
    data: dict[str, Any] = json.loads(body)
    assert data["status"] == status
    assert set(data) >= PROBLEM_KEYS
    return data


# -- the token endpoint -------------------------------------------------------------------------


async def test_token_endpoint_issues_a_bearer_access_token(emulator: RunningEmulator) -> None:
    """Good client credentials: access_token, expires_in 3600, token_type Bearer, the asked scope."""
    form = {
        "grant_type": "client_credentials",
        "client_id": "demo",
        "client_secret": "demo-secret",
        "scope": "StorefrontUsers_full",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emulator.url}/connect/token", data=form) as response,
    ):
        body = await response.json()
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert body["expires_in"] == 3600
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "StorefrontUsers_full"
    assert emulator.state.access_token_valid(body["access_token"])


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "client_credentials", "client_id": "demo", "client_secret": "x"}, "invalid_client"),
        (
            {"grant_type": "client_credentials", "client_id": "other", "client_secret": "demo-secret"},
            "invalid_client",
        ),
        (
            {"grant_type": "password", "client_id": "demo", "client_secret": "demo-secret"},
            "unsupported_grant_type",
        ),
    ],
)
async def test_token_endpoint_refuses_with_an_oauth_error(
    emulator: RunningEmulator, form: dict[str, str], error: str
) -> None:
    """A wrong client or grant type is 400 with the OAuth2 error code."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emulator.url}/connect/token", data=form) as response,
    ):
        assert response.status == 400
        assert await response.json() == {"error": error}


async def test_token_endpoint_accepts_basic_auth_and_refuses_it_with_401(
    emulator: RunningEmulator,
) -> None:
    """Client credentials by HTTP Basic work; wrong ones are 401 invalid_client."""
    form = {"grant_type": "client_credentials"}
    good = base64.b64encode(b"demo:demo-secret").decode()
    bad = base64.b64encode(b"demo:nope").decode()
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Basic {good}"}
        async with session.post(f"{emulator.url}/connect/token", data=form, headers=headers) as response:
            assert response.status == 200
        headers = {"Authorization": f"Basic {bad}"}
        async with session.post(f"{emulator.url}/connect/token", data=form, headers=headers) as response:
            assert response.status == 401
            assert await response.json() == {"error": "invalid_client"}


async def test_token_endpoint_wants_a_form(emulator: RunningEmulator) -> None:
    """A JSON body at the token endpoint is 400 invalid_request."""
    body = {"grant_type": "client_credentials", "client_id": "demo", "client_secret": "demo-secret"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emulator.url}/connect/token", json=body) as response,
    ):
        assert response.status == 400
        assert await response.json() == {"error": "invalid_request"}


# -- authentication and scoping -----------------------------------------------------------------


async def test_api_call_without_bearer_is_401(api: Api) -> None:
    """No Authorization header: 401 with WWW-Authenticate: Bearer."""
    status, _, body = await api.call("GET", STOREFRONTS, auth=False)
    assert status == 401
    assert body == b""


async def test_revoked_access_token_is_401(api: Api, emulator: RunningEmulator) -> None:
    """After revoke_access_tokens the old token gets 401; a new one works."""
    emulator.state.revoke_access_tokens()
    assert (await api.call("GET", STOREFRONTS))[0] == 401
    await api.login()
    assert (await api.call("GET", STOREFRONTS))[0] == 200


async def test_expired_access_token_is_401(api: Api, emulator: RunningEmulator) -> None:
    """An access token past expires_in is refused."""
    real_clock = emulator.state.clock
    emulator.state.clock = lambda: real_clock() + 3601
    assert (await api.call("GET", STOREFRONTS))[0] == 401


async def test_wrong_tenant_is_403(api: Api) -> None:
    """A tenantId other than the emulator's is 403 ProblemDetails."""
    status, content_type, body = await api.call("GET", STOREFRONTS, params={"tenantId": 2})
    assert status == 403
    problem(content_type, body, 403)


async def test_missing_storefront_id_is_a_400_validation_problem(api: Api) -> None:
    """A storefront-users call without storefrontId is 400 with errors.storefrontId."""
    status, content_type, body = await api.call("GET", f"{USERS}/token", params={"storefrontUserId": "u"})
    assert status == 400
    data = json.loads(body)
    assert content_type == "application/problem+json"
    assert data["errors"] == {"storefrontId": ["The storefrontId field is required."]}


async def test_unknown_storefront_is_404(api: Api) -> None:
    """A storefrontId the tenant lacks is 404 ProblemDetails."""
    status, content_type, body = await api.call("GET", f"{USERS}/u", params={"storefrontId": 9})
    assert status == 404
    assert problem(content_type, body, 404)["title"] == "Storefront not found"


# -- storefront users ---------------------------------------------------------------------------


async def test_create_is_201_then_409(api: Api) -> None:
    """Create answers 201 StorefrontUserDto, and 409 ProblemDetails for the same id."""
    request = {"storefrontUserId": "jane@example.com", "isAnonymous": False}
    status, _, body = await api.call("POST", USERS, params={"storefrontId": 2, "tenantId": 1}, body=request)
    assert status == 201
    assert json.loads(body) == {
        "userId": "jane@example.com",
        "tenantId": 1,
        "storefrontId": 2,
        "isAnonymous": False,
    }
    status, content_type, body = await api.call("POST", USERS, params={"storefrontId": 2}, body=request)
    problem(content_type, body, 409)


async def test_create_without_user_id_is_400(api: Api) -> None:
    """Create without storefrontUserId is a 400 validation problem."""
    status, _, body = await api.call("POST", USERS, params={"storefrontId": 1}, body={"isAnonymous": True})
    assert status == 400
    assert "storefrontUserId" in json.loads(body)["errors"]


async def test_the_same_id_in_two_storefronts_is_two_users(api: Api) -> None:
    """Users belong to one storefront: the same id may exist in each."""
    await create(api, "dup", anonymous=True, storefront=1)
    await create(api, "dup", anonymous=False, storefront=2)
    status, _, body = await api.call("GET", f"{USERS}/dup", params={"storefrontId": 2})
    assert status == 200
    assert json.loads(body)["isAnonymous"] is False


async def test_get_finds_a_percent_encoded_id(api: Api) -> None:
    """Get decodes the id from the path: john%40wood.com and a%2Fb find their users."""
    await create(api, "john@wood.com", anonymous=False)
    await create(api, "a/b", anonymous=True)
    status, _, body = await api.call("GET", f"{USERS}/john%40wood.com", params={"storefrontId": 1})
    assert status == 200
    assert json.loads(body)["userId"] == "john@wood.com"
    status, _, body = await api.call("GET", f"{USERS}/a%2Fb", params={"storefrontId": 1})
    assert status == 200
    assert json.loads(body)["userId"] == "a/b"


async def test_get_routes_ids_with_braces(api: Api, emulator: RunningEmulator) -> None:
    """Get of the id "{x}" (sent as %7Bx%7D) is the StorefrontUsers_Get operation and finds the user."""
    await create(api, "{x}", anonymous=False)
    status, _, body = await api.call("GET", f"{USERS}/%7Bx%7D", params={"storefrontId": 1})
    assert (status, json.loads(body)["userId"]) == (200, "{x}")
    assert emulator.state.calls[-1].operation == "StorefrontUsers_Get"


async def test_get_missing_user_is_404_problem(api: Api) -> None:
    """Get of a user that does not exist is 404 application/problem+json."""
    status, content_type, body = await api.call("GET", f"{USERS}/nobody", params={"storefrontId": 1})
    assert status == 404
    problem(content_type, body, 404)


async def test_get_token_is_a_signed_jwt_as_plain_text(api: Api, emulator: RunningEmulator) -> None:
    """GetToken: text/plain RS256 JWT with sub, storefront_id, tenant_id, iat, nbf, integer exp."""
    await create(api, "jane", anonymous=False)
    params = {"storefrontUserId": "jane", "storefrontId": 1}
    status, content_type, body = await api.call(
        "GET", f"{USERS}/token", params=params, headers={"Accept": "text/plain"}
    )
    assert status == 200
    assert content_type == "text/plain"
    token = body.decode()
    claims = jwt.decode(token, emulator.state.public_key_pem, algorithms=["RS256"])
    assert set(claims) == {"sub", "storefront_id", "tenant_id", "iat", "nbf", "exp", "jti"}
    assert claims["sub"] == "jane"
    assert (claims["storefront_id"], claims["tenant_id"]) == (1, 1)
    assert isinstance(claims["exp"], int)
    assert claims["exp"] == claims["iat"] + 3600
    assert jwt.get_unverified_header(token)["alg"] == "RS256"


async def test_two_tokens_for_one_user_differ(api: Api) -> None:
    """Each GetToken issues a new token (a unique jti), even within one second."""
    await create(api, "u", anonymous=True)
    params = {"storefrontUserId": "u", "storefrontId": 1}
    first = (await api.call("GET", f"{USERS}/token", params=params))[2]
    second = (await api.call("GET", f"{USERS}/token", params=params))[2]
    assert first != second


async def test_get_token_for_json_only_clients_is_a_json_string(api: Api) -> None:
    """A client that accepts only JSON gets the token as a JSON string."""
    await create(api, "u", anonymous=True)
    params = {"storefrontUserId": "u", "storefrontId": 1}
    status, content_type, body = await api.call(
        "GET", f"{USERS}/token", params=params, headers={"Accept": "application/json"}
    )
    assert status == 200
    assert content_type == "application/json"
    assert json.loads(body).count(".") == 2


async def test_get_token_for_missing_user_is_404(api: Api) -> None:
    """GetToken for a user that does not exist is 404."""
    params = {"storefrontUserId": "ghost", "storefrontId": 1}
    status, content_type, body = await api.call("GET", f"{USERS}/token", params=params)
    assert status == 404
    problem(content_type, body, 404)


async def test_merge_moves_the_guest_and_a_second_merge_is_409(api: Api) -> None:
    """Merge is 200 with an empty body; the guest is gone (404) and merging it again is 409."""
    await create(api, "anon-1", anonymous=True)
    await create(api, "jane", anonymous=False)
    merge = {"anonymousStorefrontUserId": "anon-1", "regularStorefrontUserId": "jane"}
    path = f"{USERS}/merge-anonymous"
    assert (await api.call("POST", path, params={"storefrontId": 1}, body=merge))[::2] == (200, b"")
    assert (await api.call("GET", f"{USERS}/anon-1", params={"storefrontId": 1}))[0] == 404
    status, content_type, body = await api.call("POST", path, params={"storefrontId": 1}, body=merge)
    assert status == 409
    problem(content_type, body, 409)


@pytest.mark.parametrize(
    ("anonymous", "regular", "status"),
    [
        ("anon-2", "nobody", 404),  # the regular user does not exist
        ("nobody", "jane", 404),  # the anonymous user does not exist
        ("kim", "jane", 409),  # the "anonymous" side is regular
        ("anon-2", "anon-3", 409),  # the "regular" side is anonymous
        ("anon-2", "anon-2", 409),  # into itself
    ],
)
async def test_merge_only_from_an_existing_guest_into_an_existing_customer(
    api: Api, anonymous: str, regular: str, status: int
) -> None:
    """MergeAnonymous: 404 when a side is missing, 409 unless it is guest into regular."""
    for user_id, is_anonymous in (("anon-2", True), ("anon-3", True), ("jane", False), ("kim", False)):
        await create(api, user_id, anonymous=is_anonymous)
    merge = {"anonymousStorefrontUserId": anonymous, "regularStorefrontUserId": regular}
    answer = await api.call("POST", f"{USERS}/merge-anonymous", params={"storefrontId": 1}, body=merge)
    problem(answer[1], answer[2], status)


async def test_register_turns_a_guest_regular_once(api: Api) -> None:
    """Register: 200 with isAnonymous false; again 409; an unknown id 404."""
    await create(api, "anon-r", anonymous=True)
    path = f"{USERS}/register"
    status, _, body = await api.call(
        "POST", path, params={"storefrontId": 1}, body={"storefrontUserId": "anon-r"}
    )
    assert status == 200
    assert json.loads(body)["isAnonymous"] is False
    again = await api.call("POST", path, params={"storefrontId": 1}, body={"storefrontUserId": "anon-r"})
    problem(again[1], again[2], 409)
    missing = await api.call("POST", path, params={"storefrontId": 1}, body={"storefrontUserId": "x"})
    problem(missing[1], missing[2], 404)


async def test_users_get_all_hides_guests_unless_asked(api: Api) -> None:
    """StorefrontUsers_GetAll lists regular users; includeAnonymous=true adds the guests."""
    await create(api, "anon-g", anonymous=True)
    await create(api, "reg-g", anonymous=False)
    status, _, body = await api.call("GET", USERS, params={"storefrontId": 1})
    assert status == 200
    assert json.loads(body) == {
        "total": 1,
        "items": [{"userId": "reg-g", "tenantId": 1, "storefrontId": 1, "isAnonymous": False}],
    }
    params = {"storefrontId": 1, "includeAnonymous": "true"}
    status, _, body = await api.call("GET", USERS, params=params)
    assert status == 200
    assert [item["userId"] for item in json.loads(body)["items"]] == ["anon-g", "reg-g"]


# -- storefronts --------------------------------------------------------------------------------


async def test_storefronts_get_all_pages_and_filters(api: Api) -> None:
    """Storefronts_GetAll: total and items; skip/take page, types filters, search matches names."""
    status, _, body = await api.call("GET", STOREFRONTS, params={"skip": 1, "take": 1})
    page = json.loads(body)
    assert status == 200
    assert page["total"] == 2
    assert [item["id"] for item in page["items"]] == [2]
    assert set(page["items"][0]) == {"id", "tenantId", "name", "type", "created", "status"}
    _, _, body = await api.call("GET", STOREFRONTS, params=[("types", "Shopify"), ("types", "Magento")])
    assert json.loads(body) == {"total": 0, "items": []}
    _, _, body = await api.call("GET", STOREFRONTS, params={"types": "Custom", "search": "front 1"})
    assert [item["id"] for item in json.loads(body)["items"]] == [1]


async def test_storefronts_get_one_and_404(api: Api) -> None:
    """Storefronts_Get: the DTO of a known id, 404 ProblemDetails for another."""
    status, _, body = await api.call("GET", f"{STOREFRONTS}/2")
    assert status == 200
    assert json.loads(body)["name"] == "Storefront 2"
    status, content_type, body = await api.call("GET", f"{STOREFRONTS}/3")
    assert status == 404
    problem(content_type, body, 404)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/api/storefront/v1/nowhere", 404), ("DELETE", f"{USERS}/someone", 405)],
)
async def test_unknown_path_or_method_is_answered_and_recorded(
    api: Api, emulator: RunningEmulator, method: str, path: str, status: int
) -> None:
    """A path or method the API lacks gets its 404/405, recorded as an unknown operation."""
    assert (await api.call(method, path))[0] == status
    assert [(c.operation, c.status) for c in emulator.state.calls[1:]] == [("unknown", status)]


# -- the call log and faults --------------------------------------------------------------------


async def test_every_call_is_recorded_with_operation_path_query_and_body(
    api: Api, emulator: RunningEmulator
) -> None:
    """The log names the operation and keeps the raw path, query, JSON body and status."""
    await create(api, "rec@example.com", anonymous=True)
    await api.call("GET", f"{USERS}/rec%40example.com", params={"storefrontId": 1})
    token_call, create_call, get_call = emulator.state.calls
    assert token_call.operation == "token"
    assert token_call.form is not None
    assert token_call.form["client_secret"] == "<redacted>"
    assert (create_call.operation, create_call.method, create_call.status) == (
        "StorefrontUsers_Create",
        "POST",
        201,
    )
    assert create_call.json == {"storefrontUserId": "rec@example.com", "isAnonymous": True}
    assert get_call.path == f"{USERS}/rec%40example.com"
    assert get_call.query == {"storefrontId": "1"}
    assert emulator.state.count("StorefrontUsers_Get") == 1


async def test_fail_operation_fails_that_operation_n_times(api: Api, emulator: RunningEmulator) -> None:
    """fail_operation(status=503, times=2): two 503s for that operation only, then normal answers."""
    emulator.state.fail_operation("Storefronts_GetAll", status=503, times=2)
    assert (await api.call("GET", f"{STOREFRONTS}/1"))[0] == 200
    statuses = [(await api.call("GET", STOREFRONTS))[0] for _ in range(3)]
    assert statuses == [503, 503, 200]


async def test_fail_all_includes_the_token_endpoint(emulator: RunningEmulator) -> None:
    """fail_all answers the token endpoint with the status too (the gateway is down)."""
    emulator.state.fail_all(status=502)
    form = {"grant_type": "client_credentials", "client_id": "demo", "client_secret": "demo-secret"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emulator.url}/connect/token", data=form) as response,
    ):
        assert response.status == 502


async def test_delay_holds_answers_back(api: Api, emulator: RunningEmulator) -> None:
    """delay(0.2) makes a call take at least 0.2 s."""
    emulator.state.delay(0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await api.call("GET", STOREFRONTS))[0] == 200
    assert loop.time() - started >= 0.2


async def test_dropped_connection_gets_no_answer(api: Api, emulator: RunningEmulator) -> None:
    """drop_connections closes the connection without a response; the call is still recorded."""
    emulator.state.drop_connections(times=1, operations=["StorefrontUsers_Create"])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api.call("POST", USERS, params={"storefrontId": 1}, body={"storefrontUserId": "d"})
    [call] = emulator.state.calls_of("StorefrontUsers_Create")
    assert call.status is None
    await create(api, "d", anonymous=True)


@pytest.mark.parametrize(("fault", "check"), [("malformed_token", "not-a-jwt"), ("token_without_exp", "exp")])
async def test_token_faults(api: Api, emulator: RunningEmulator, fault: str, check: str) -> None:
    """malformed_token hands out a non-JWT; token_without_exp a JWT lacking exp."""
    await create(api, "u", anonymous=True)
    setattr(emulator.state.faults, fault, True)
    body = (await api.call("GET", f"{USERS}/token", params={"storefrontUserId": "u", "storefrontId": 1}))[2]
    if fault == "malformed_token":
        assert body == b"not-a-jwt"
    else:
        assert check not in jwt.decode(body.decode(), options={"verify_signature": False})


# -- control endpoints --------------------------------------------------------------------------


async def test_control_endpoints_set_faults_list_calls_and_reset(api: Api, emulator: RunningEmulator) -> None:
    """POST /_emulator/faults sets faults, GET /_emulator/calls lists calls, reset clears both."""
    session, url = api.session, emulator.url
    fault = {"fail_status": 500, "fail_remaining": 1, "operations": ["Storefronts_GetAll"]}
    async with session.post(f"{url}/_emulator/faults", json=fault) as response:
        assert response.status == 200
        assert (await response.json())["fail_status"] == 500
    assert (await api.call("GET", STOREFRONTS))[0] == 500
    async with session.get(f"{url}/_emulator/calls") as response:
        calls = await response.json()
    assert [call["operation"] for call in calls] == ["token", "Storefronts_GetAll"]
    async with session.post(f"{url}/_emulator/faults", json={"delay_s": "soon"}) as response:
        assert response.status == 400
    async with session.post(f"{url}/_emulator/reset") as response:
        assert response.status == 204
    assert emulator.state.calls == []
    assert emulator.state.faults.fail_status is None
    async with session.post(f"{url}/_emulator/revoke-access-tokens") as response:
        assert response.status == 204
    assert (await api.call("GET", STOREFRONTS))[0] == 401


async def test_control_endpoints_are_404_unless_enabled(aiohttp_server: Any) -> None:
    """Without enable_control /_emulator/* does not exist."""
    running = await start_emulator(aiohttp_server, EmulatorOptions())
    async with aiohttp.ClientSession() as session:
        for method, path in (("GET", "calls"), ("POST", "faults"), ("POST", "reset")):
            async with session.request(method, f"{running.url}/_emulator/{path}") as response:
                assert response.status == 404


# -- seeding and the command --------------------------------------------------------------------


def test_seed_file_adds_storefronts_and_users(tmp_path: Path) -> None:
    """A seed YAML adds named storefronts and users to the options."""
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        "storefronts: [5, {id: 6, name: Outlet, status: Prod}]\n"
        "users: [{storefront_id: 5, user_id: jane@example.com, is_anonymous: false}]\n"
    )
    options = load_seed(seed, EmulatorOptions())
    assert [(s.id, s.name, s.status) for s in options.storefronts] == [
        (5, None, "Dev"),
        (6, "Outlet", "Prod"),
    ]
    assert [(u.storefront_id, u.user_id, u.is_anonymous) for u in options.users] == [
        (5, "jane@example.com", False)
    ]


def test_seed_file_with_unknown_keys_is_refused(tmp_path: Path) -> None:
    """A user entry with an unknown key is a ValueError naming the entry."""
    seed = tmp_path / "seed.yaml"
    seed.write_text("users: [{storefront_id: 1, id: x}]\n")
    with pytest.raises(ValueError, match=r"users\[0\]"):
        load_seed(seed, EmulatorOptions())


async def test_emulator_command_prints_its_url_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`python -m proxy emulator --port 0` prints the listening line, serves, and exits 0 on SIGTERM."""
    seed = tmp_path / "seed.yaml"
    seed.write_text("users: [{storefront_id: 3, user_id: seeded, is_anonymous: true}]\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "emulator",
        "--port",
        "0",
        "--storefront-id",
        "3",
        "--client-secret",
        "s3cret",
        "--seed",
        str(seed),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        assert line.startswith("emulator listening on http://127.0.0.1:")
        url = line.removeprefix("emulator listening on ").strip()
        port = int(url.rsplit(":", 1)[1])
        assert port > 0
        notes = [(await asyncio.wait_for(process.stdout.readline(), 15)).decode() for _ in range(7)]
        assert (
            "".join(notes)
            == start_up_notes(EmulatorOptions(client_secret="s3cret", storefront_ids=(3,)), "127.0.0.1", port)
            + "\n"
        )
        form = {"grant_type": "client_credentials", "client_id": "demo", "client_secret": "s3cret"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/connect/token", data=form) as response:
                access_token = (await response.json())["access_token"]
            headers = {"Authorization": f"Bearer {access_token}"}
            params = {"storefrontId": "3"}
            async with session.get(f"{url}{USERS}/seeded", params=params, headers=headers) as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert process.stderr is not None
        assert await process.stderr.read() == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_start_up_notes_give_the_credentials_and_a_customers_canvas_section_the_sidecar_accepts() -> None:
    """The lines after the listening line name the credentials, and their YAML is a valid customers_canvas."""
    options = EmulatorOptions(client_id="app", client_secret="pssst", tenant_id=4, storefront_ids=(2, 1))
    notes = start_up_notes(options, "0.0.0.0", 8081)
    lines = notes.splitlines()
    assert lines[:2] == [
        "accepts client_id 'app' with client_secret 'pssst' (tenant 4); storefronts: 1, 2",
        "for the sidecar's config (storefront_id: one of the storefronts above):",
    ]
    section = yaml.safe_load("\n".join(lines[2:]))
    document = {
        **section,
        "secret": "a-secret-of-enough-length",
        "storefronts": [{"name": "main", "storefront_id": 1, "upstream": "http://127.0.0.1:8000"}],
    }
    settings = parse_settings(document, {})
    assert settings.customers_canvas.api_url == "http://127.0.0.1:8081"
    assert settings.customers_canvas.client_secret.get_secret_value() == "pssst"
    assert settings.customers_canvas.tenant_id == 4


def test_emulator_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`cc-sidecar emulator --help` gives each option help text and its default."""
    with pytest.raises(SystemExit):
        main(["emulator", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in [
        ("--host HOST", "127.0.0.1"),
        ("--port PORT", "8081"),
        ("--client-id CLIENT_ID", "demo"),
        ("--client-secret CLIENT_SECRET", "demo-secret"),
        ("--tenant-id TENANT_ID", "1"),
        ("--storefront-id ID", "1"),
        ("--token-lifetime-s TOKEN_LIFETIME_S", "3600"),
    ]:
        described = text.split(f" {option} ", 1)[1]
        assert f"(default: {default})" in described.split(" --", 1)[0], option
