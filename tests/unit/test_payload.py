"""proxy.payload: the JSON object about a customer, its element, its counts, and the tenant."""

from __future__ import annotations

import asyncio
import json
from html.parser import HTMLParser
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.model import CustomersCanvasSettings
from proxy.emulator import EmulatorOptions
from proxy.injection import inject_html
from proxy.metrics import Metrics
from proxy.payload import ELEMENT_ID, TOKEN_PATH, PayloadMaker, Tenants, TokenPayload, render_element
from proxy.storefront_api import StorefrontApiClient, create_api_session
from proxy.tokens import CustomerToken
from tests.fixtures.emulator import settings_for, start_emulator

OPEN = b'<script id="cc-storefront-user" type="application/json">'
NOW = 1_700_000_000.0
HUB = "https://eu.customerscanvashub.com"
GATEWAY = "https://api.eu.customerscanvashub.com"
FIELDS = [
    "storefrontId",
    "tenantId",
    "userId",
    "isAnonymous",
    "token",
    "expiresAt",
    "expiresIn",
    "renewIn",
    "tokenUrl",
    "cchubUrl",
    "cchubApiGatewayUrl",
]


def payload(user_id: str = "customer-42", token: str = "tok.en.value") -> TokenPayload:
    return TokenPayload(
        storefront_id=12,
        tenant_id=7,
        user_id=user_id,
        is_anonymous=False,
        token=token,
        expires_at=1_700_003_600,
        expires_in=3599,
        renew_in=1770,
        cchub_url=HUB,
        cchub_api_gateway_url=GATEWAY,
    )


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def no_lookup() -> dict[int, int | None]:
    raise AssertionError("a configured tenant is never looked up")


def maker(clock: Clock, tenants: Tenants | None = None) -> PayloadMaker:
    return PayloadMaker(12, tenants or Tenants(7, no_lookup), hub_url=HUB, api_url=GATEWAY + "/", clock=clock)


TOKEN = CustomerToken(
    storefront_id=12,
    user_id="alice",
    is_anonymous=False,
    token="tok.en.value",
    expires_at=int(NOW) + 3600,
    renew_at=NOW + 1770.5,
)


def element_json(element: bytes) -> Any:
    return json.loads(element[len(OPEN) : -len(b"</script>")])


class TestTokenPayload:
    def test_to_json_is_the_contract_object(self) -> None:
        """to_json gives exactly the contract's keys, in its table's order, compact."""
        text = payload().to_json()
        assert json.loads(text) == {
            "storefrontId": 12,
            "tenantId": 7,
            "userId": "customer-42",
            "isAnonymous": False,
            "token": "tok.en.value",
            "expiresAt": 1_700_003_600,
            "expiresIn": 3599,
            "renewIn": 1770,
            "tokenUrl": "/.cc-sidecar/token",
            "cchubUrl": HUB,
            "cchubApiGatewayUrl": GATEWAY,
        }
        assert list(json.loads(text)) == FIELDS
        assert " " not in text
        assert TOKEN_PATH == "/.cc-sidecar/token"


class TestPayloadMaker:
    def test_counts_are_taken_by_the_clock_when_rendered(self) -> None:
        """expiresIn counts down (rounded down) and renewIn to the renewal (rounded up) by the clock."""
        clock = Clock()
        made = maker(clock)
        first = json.loads(made.json(TOKEN))
        clock.now += 100.25
        later = element_json(made.element(TOKEN))
        assert (first["expiresIn"], first["renewIn"]) == (3600, 1771)
        assert (later["expiresIn"], later["renewIn"]) == (3499, 1671)

    def test_counts_never_go_negative(self) -> None:
        """Past the renewal point renewIn is 0 (ask now); past exp expiresIn is 0."""
        clock = Clock(NOW + 4000)
        body = json.loads(maker(clock).json(TOKEN))
        assert (body["expiresIn"], body["renewIn"]) == (0, 0)

    def test_token_object_has_every_field(self) -> None:
        """A customer with a token: every field of the contract, the gateway without its trailing /."""
        body = json.loads(maker(Clock()).json(TOKEN))
        assert body == {
            "storefrontId": 12,
            "tenantId": 7,
            "userId": "alice",
            "isAnonymous": False,
            "token": "tok.en.value",
            "expiresAt": int(NOW) + 3600,
            "expiresIn": 3600,
            "renewIn": 1771,
            "tokenUrl": TOKEN_PATH,
            "cchubUrl": HUB,
            "cchubApiGatewayUrl": GATEWAY,
        }

    def test_deferred_guest_has_nulls_where_the_contract_says(self) -> None:
        """A cookie-less first visit: token, expiresAt, expiresIn and renewIn are null, the rest set."""
        element = render_element(maker(Clock()).for_deferred_guest("anon-1"))
        assert element_json(element) == {
            "storefrontId": 12,
            "tenantId": 7,
            "userId": "anon-1",
            "isAnonymous": True,
            "token": None,
            "expiresAt": None,
            "expiresIn": None,
            "renewIn": None,
            "tokenUrl": TOKEN_PATH,
            "cchubUrl": HUB,
            "cchubApiGatewayUrl": GATEWAY,
        }


@pytest.mark.parametrize(
    ("api_url", "hub_url"),
    [
        ("https://api.customerscanvashub.com", "https://customerscanvashub.com"),
        ("https://api.eu.customerscanvashub.com/", "https://eu.customerscanvashub.com"),
        ("https://API.au.customerscanvashub.com:8443", "https://au.customerscanvashub.com:8443"),
        ("https://cc-gateway.example.com", "https://cc-gateway.example.com"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
        ("https://apix.example.com", "https://apix.example.com"),
    ],
)
def test_hub_url_defaults_to_api_url_without_its_api_label(api_url: str, hub_url: str) -> None:
    """customers_canvas.hub_url defaults to api_url with a leading "api." host label removed."""
    settings = settings_for(api_url)
    assert settings.effective_hub_url == hub_url


def test_configured_hub_url_wins() -> None:
    """A configured hub_url is used as given (without a trailing /)."""
    settings = settings_for("https://api.customerscanvashub.com", hub_url="https://hub.example.com/")
    assert settings.effective_hub_url == "https://hub.example.com"


class TestTenants:
    async def test_unknown_tenant_is_learnt_from_the_api(self, aiohttp_server: Any) -> None:
        """Without tenant_id the tenant is null until Storefronts_GetAll reports it, then the API's."""
        running = await start_emulator(aiohttp_server, EmulatorOptions(tenant_id=42, storefront_ids=(12, 13)))
        settings: CustomersCanvasSettings = settings_for(running.url, tenant_id=None)
        session = create_api_session(settings)
        try:
            client = StorefrontApiClient(settings, session, Metrics())
            tenants = Tenants(None, client.storefront_tenants)
            made = PayloadMaker(12, tenants, hub_url=HUB, api_url=GATEWAY, clock=Clock())
            assert json.loads(made.json(TOKEN))["tenantId"] is None
            for _ in range(200):
                if tenants.tenant_of(12) is not None:
                    break
                await asyncio.sleep(0.01)
            assert json.loads(made.json(TOKEN))["tenantId"] == 42
            assert tenants.tenant_of(13) == 42
            await tenants.aclose()
        finally:
            await session.close()

    async def test_failed_lookup_leaves_null_and_is_not_retried_at_once(self) -> None:
        """A lookup that fails gives null and no error; the next is tried only after the retry time."""
        calls: list[int] = []

        async def failing() -> dict[int, int | None]:
            calls.append(1)
            raise aiohttp.ClientError("down")

        clock = Clock(0.0)
        tenants = Tenants(None, failing, clock=clock, retry_s=30)
        assert tenants.tenant_of(12) is None
        await asyncio.sleep(0.01)
        assert tenants.tenant_of(12) is None
        await asyncio.sleep(0.01)
        clock.now = 31.0
        assert tenants.tenant_of(12) is None
        await asyncio.sleep(0.01)
        assert len(calls) == 2
        await tenants.aclose()


class ScriptFinder(HTMLParser):
    """Collects the text of every cc-storefront-user element the way a browser splits it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.inside = False
        self.elements: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and ("id", ELEMENT_ID) in attrs:
            self.inside = True
            self.elements.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.elements[-1] += data


def elements_in(page: bytes) -> list[str]:
    finder = ScriptFinder()
    finder.feed(page.decode("utf-8"))
    finder.close()
    return finder.elements


HOSTILE_IDS = [
    "</script><script>alert(1)</script>",
    "<!--<script>",
    "</SCRIPT >",
    "\"'`\\",
    "a&amp;b",
    "zwölf \u2028\u2029 \U0001f600",
    "x" * 10_000 + "</script>",
    "\ud800 lone surrogate",
]


class TestRenderElement:
    def test_element_shape(self) -> None:
        """The element is the script tag with the id and JSON type, the JSON, and its end tag."""
        element = render_element(payload())
        assert element.startswith(OPEN)
        assert element.endswith(b"</script>")
        assert json.loads(element[len(OPEN) : -len(b"</script>")]) == json.loads(payload().to_json())

    def test_markup_characters_are_escaped(self) -> None:
        """<, > and & are written as \\u003c, \\u003e, \\u0026 inside the element."""
        element = render_element(payload(user_id="<a>&"))
        assert b"\\u003ca\\u003e\\u0026" in element
        assert element.count(b"<") == 2
        assert b"&" not in element

    def test_line_separators_are_escaped(self) -> None:
        """U+2028 and U+2029 appear only as \\u2028 and \\u2029 escapes."""
        element = render_element(payload(user_id="a\u2028b\u2029c"))
        assert b"a\\u2028b\\u2029c" in element
        assert "\u2028".encode() not in element
        assert "\u2029".encode() not in element

    @pytest.mark.parametrize("user_id", HOSTILE_IDS)
    def test_hostile_user_id_stays_inside(self, user_id: str) -> None:
        """A hostile user id cannot end the element: a parser finds one element whose JSON
        round-trips, and "</script" occurs once per element."""
        hostile = payload(user_id=user_id, token=user_id)
        page = inject_html(b"<html><head></head><body></body></html>", render_element(hostile))
        found = elements_in(page)
        assert len(found) == 1
        assert json.loads(found[0]) == json.loads(hostile.to_json())
        assert json.loads(found[0])["userId"] == user_id
        assert page.lower().count(b"</script") == 1

    @given(st.text(), st.text())
    def test_any_text_round_trips(self, user_id: str, token: str) -> None:
        """For any user id and token the element's JSON parses back to the payload."""
        element = render_element(payload(user_id=user_id, token=token))
        content = elements_in(element)
        assert len(content) == 1
        assert json.loads(content[0])["userId"] == user_id
        assert json.loads(content[0])["token"] == token
        assert element.lower().count(b"</script") == 1
        assert b"<" not in element[len(OPEN) : -len(b"</script>")]
