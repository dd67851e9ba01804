"""Tokens only for the shop's own pages: CORS headers, Fetch Metadata and the token endpoint."""

from __future__ import annotations

import json
from typing import Any

from tests.fixtures.emulator import RunningEmulator
from tests.fixtures.shop import Shop, SidecarFactory
from tests.integration.test_tokens_e2e import config, element_of, get

CORS = {
    "Access-Control-Allow-Origin": "http://evil.example",
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Expose-Headers": "X-CC-User-Token",
}
SESSION = {"Cookie": "PHPSESSID=s1"}


async def test_a_token_bearing_page_never_carries_the_shops_cors_headers(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """The shop allows credentialed reads from another origin: the editor page with a token goes
    out without Allow-Origin, Allow-Credentials and Expose-Headers; a plain page keeps them."""
    shop.state.extra_response_headers.update(CORS)
    sidecar = await make_sidecar(config(shop, emulator, inject=["html", "header"]))
    response, body = await get(sidecar, "/editor/mug", headers={**SESSION, "Origin": "http://evil.example"})
    assert element_of(body)["token"]
    assert not [name for name in CORS if name in response.headers]
    response, _ = await get(sidecar, "/plain", headers={**SESSION, "Origin": "http://evil.example"})
    assert {name: response.headers[name] for name in CORS} == CORS


async def test_cross_site_and_same_site_fetches_get_the_page_without_a_token(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Sec-Fetch-Site cross-site, or same-site with mode cors: the shop's page, private, marked
    token-withheld, no element, no API call; a same-site navigation gets its token."""
    sidecar = await make_sidecar(config(shop, emulator))
    for site, mode in (("cross-site", "cors"), ("cross-site", "navigate"), ("same-site", "cors")):
        response, body = await get(
            sidecar, "/editor/mug", headers={**SESSION, "Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode}
        )
        assert response.status == 200
        assert body == shop.state.editor_html.encode()
        assert response.headers["X-CC-Sidecar"] == "token-withheld"
        assert response.headers["Cache-Control"] == "private, no-store"
    assert emulator.state.calls == []
    _, body = await get(
        sidecar,
        "/editor/mug",
        headers={**SESSION, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"},
    )
    assert element_of(body)["token"]


async def test_the_token_endpoint_answers_only_same_origin_requests(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """403 to cross-site and same-site requests and to a foreign Origin without metadata; 200 to
    same-origin, none and no metadata; every answer nosniff and CORP same-origin."""
    sidecar = await make_sidecar(config(shop, emulator))
    own_origin = f"http://{sidecar.host}:{sidecar.port}"
    cases: list[tuple[dict[str, str], int]] = [
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": "http://evil.example"}, 403),
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({"Sec-Fetch-Site": "none"}, 200),
        ({"Origin": own_origin}, 200),
        ({}, 200),
    ]
    for headers, status in cases:
        response, body = await get(sidecar, "/.cc-sidecar/token", headers={**SESSION, **headers})
        assert (headers, response.status) == (headers, status)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin"
        assert response.headers["Cache-Control"] == "no-store"
        if status == 200:
            payload: dict[str, Any] = json.loads(body)
            assert payload["token"]
