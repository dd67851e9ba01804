"""The page script: served under /.cc-sidecar/v1/, and its tag on editor pages (inject: [script])."""

from __future__ import annotations

import gzip
import hashlib
import re
from importlib import resources
from typing import Any

import aiohttp
import pytest

from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config
from tests.integration.test_tokens_e2e import ELEMENT, element_of, get

SCRIPT = (resources.files("proxy") / "static" / "cc-user.js").read_bytes()
DECLARATIONS = (resources.files("proxy") / "static" / "cc-user.d.ts").read_bytes()
DEAD_API = "http://127.0.0.1:9"
TAG = b'<script src="/.cc-sidecar/v1/cc-user.js"></script>'
STRICT_CSP = "script-src 'nonce-Zm9vYmFy+/_-==' 'strict-dynamic'; object-src 'none'; base-uri 'none'"
NONCE_TAG = b'<script src="/.cc-sidecar/v1/cc-user.js" nonce="Zm9vYmFy+/_-=="></script>'


def script_config(shop: Shop, api_url: str, **storefront: Any) -> dict[str, Any]:
    storefront.setdefault("inject", ["script"])
    return sidecar_config(shop.url, api_url, **storefront)


def tags_of(body: bytes) -> list[bytes]:
    return re.findall(rb"<script src=\"/\.cc-sidecar/[^>]*></script>", body)


@pytest.mark.parametrize(
    ("path", "content", "content_type"),
    [
        ("/.cc-sidecar/v1/cc-user.js", SCRIPT, "text/javascript; charset=utf-8"),
        ("/.cc-sidecar/v1/cc-user.d.ts", DECLARATIONS, "text/plain; charset=utf-8"),
    ],
)
async def test_the_static_files_are_served_cacheable_with_a_strong_etag(
    shop: Shop, make_sidecar: SidecarFactory, path: str, content: bytes, content_type: str
) -> None:
    """The package's bytes, publicly cacheable for a day, a strong ETag, no cookie; the shop never asked."""
    sidecar = await make_sidecar(script_config(shop, DEAD_API))
    response, body = await get(sidecar, path, headers={"Cookie": "PHPSESSID=one; cc_guest=x"})
    assert response.status == 200
    assert body == content
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    assert response.headers["ETag"] == '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in response.headers
    assert shop.state.requests == []


async def test_the_script_is_the_same_for_every_visitor_and_storefront_mode(
    shop: Shop, make_sidecar: SidecarFactory
) -> None:
    """Served with inject [html] too, to a guest or a logged-in customer: the same bytes and ETag."""
    sidecar = await make_sidecar(
        sidecar_config(shop.url, DEAD_API, trusted_networks=["127.0.0.1/32"], user={"header": "X-Shop-User"})
    )
    guest, guest_body = await get(sidecar, "/.cc-sidecar/v1/cc-user.js")
    customer, customer_body = await get(
        sidecar, "/.cc-sidecar/v1/cc-user.js", headers={"X-Shop-User": "jane@example.com"}
    )
    assert guest_body == customer_body == SCRIPT
    assert guest.headers["ETag"] == customer.headers["ETag"]


@pytest.mark.parametrize("if_none_match", ["{etag}", "W/{etag}", '"other", {etag}', "*"])
async def test_a_matching_if_none_match_gets_304(
    shop: Shop, make_sidecar: SidecarFactory, if_none_match: str
) -> None:
    """If-None-Match naming the ETag (weakly compared, in a list, or *) gets 304 without a body."""
    sidecar = await make_sidecar(script_config(shop, DEAD_API))
    first, _ = await get(sidecar, "/.cc-sidecar/v1/cc-user.js")
    etag = first.headers["ETag"]
    again, body = await get(
        sidecar, "/.cc-sidecar/v1/cc-user.js", headers={"If-None-Match": if_none_match.format(etag=etag)}
    )
    assert (again.status, body) == (304, b"")
    assert again.headers["ETag"] == etag
    assert again.headers["Cache-Control"] == "public, max-age=86400"


async def test_another_etag_gets_the_script(shop: Shop, make_sidecar: SidecarFactory) -> None:
    """An If-None-Match of an older release's script gets the current bytes with 200."""
    sidecar = await make_sidecar(script_config(shop, DEAD_API))
    response, body = await get(sidecar, "/.cc-sidecar/v1/cc-user.js", headers={"If-None-Match": '"old"'})
    assert (response.status, body) == (200, SCRIPT)


async def test_head_and_post_of_the_script(shop: Shop, make_sidecar: SidecarFactory) -> None:
    """HEAD gets the headers without the body; POST gets 405 naming GET and HEAD; neither reaches the shop."""
    sidecar = await make_sidecar(script_config(shop, DEAD_API))
    async with aiohttp.ClientSession() as client:
        async with client.head(sidecar.make_url("/.cc-sidecar/v1/cc-user.js")) as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(len(SCRIPT))
            assert await response.read() == b""
        async with client.post(sidecar.make_url("/.cc-sidecar/v1/cc-user.js"), data=b"x") as response:
            assert response.status == 405
            assert response.headers["Allow"] == "GET, HEAD"
    assert shop.state.requests == []


async def test_the_tag_follows_the_element_with_the_pages_csp_nonce(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """inject [script] with a nonce + strict-dynamic CSP: the element, then the tag carrying that nonce."""
    shop.state.extra_response_headers["Content-Security-Policy"] = STRICT_CSP
    sidecar = await make_sidecar(script_config(shop, emulator.url))
    response, body = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=one"})
    assert response.status == 200
    assert isinstance(element_of(body)["token"], str)
    element = ELEMENT.search(body)
    assert element is not None
    assert body[element.end() : element.end() + len(NONCE_TAG)] == NONCE_TAG
    assert tags_of(body) == [NONCE_TAG]


@pytest.mark.parametrize(
    "csp",
    [
        None,
        "script-src 'sha256-B2yPHKaXnvFWtRChIbabYmUBFZdVfKKXHbWtWidDVF8=' 'self'",
        "script-src 'nonce-\"><script>alert(1)</script>'",
    ],
)
async def test_without_a_usable_nonce_the_tag_goes_without_one(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory, csp: str | None
) -> None:
    """No CSP, a hash-only CSP, or a hostile nonce: the contract's tag without a nonce attribute."""
    if csp is not None:
        shop.state.extra_response_headers["Content-Security-Policy"] = csp
    sidecar = await make_sidecar(script_config(shop, emulator.url))
    _, body = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=one"})
    element_of(body)
    assert tags_of(body) == [TAG]
    assert b"alert" not in body


async def test_inject_html_alone_adds_no_tag(shop: Shop, emulator: Any, make_sidecar: SidecarFactory) -> None:
    """Without script in inject, the page gets the element only, as before."""
    sidecar = await make_sidecar(script_config(shop, emulator.url, inject=["html"]))
    _, body = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=one"})
    element_of(body)
    assert tags_of(body) == []


async def test_a_first_visit_gets_the_null_token_element_and_the_tag(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A cookie-less first visit: the null-token element and the tag, so the script can fetch tokenUrl."""
    sidecar = await make_sidecar(script_config(shop, emulator.url))
    _, body = await get(sidecar, "/editor/mug")
    assert element_of(body)["token"] is None
    element = ELEMENT.search(body)
    assert element is not None
    assert body[element.end() :].startswith(TAG)


async def test_a_gzip_page_streamed_in_chunks_gets_element_and_tag_together(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A gzip page the shop streams in 7-byte chunks: one element and the tag right after it."""
    sidecar = await make_sidecar(script_config(shop, emulator.url))
    response, body = await get(
        sidecar,
        "/editor/mug?encoding=gzip&chunked=1",
        headers={"Cookie": "PHPSESSID=one", "Accept-Encoding": "gzip"},
        auto_decompress=False,
    )
    assert response.headers["Content-Encoding"] == "gzip"
    page = gzip.decompress(body)
    element = ELEMENT.search(page)
    assert element is not None
    assert page[element.end() :].startswith(TAG)
    assert tags_of(page) == [TAG]


async def test_with_customers_canvas_down_the_page_gets_the_tag_without_an_element(
    shop: Shop, make_sidecar: SidecarFactory
) -> None:
    """No token to be had: no element, token-unavailable, but the tag, whose script asks tokenUrl."""
    sidecar = await make_sidecar(script_config(shop, DEAD_API))
    response, body = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=one"})
    assert response.status == 200
    assert response.headers["X-CC-Sidecar"] == "token-unavailable"
    assert response.headers["Cache-Control"] == "private, no-store"
    assert ELEMENT.findall(body) == []
    assert tags_of(body) == [TAG]
    assert body.replace(TAG, b"") == shop.state.editor_html.encode()
