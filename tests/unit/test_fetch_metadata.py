"""proxy.fetch_metadata: which requests may get a token, judged by Fetch Metadata and Origin."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.fetch_metadata import page_may_carry_token, strip_cors, token_request_allowed


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, True),
        ({"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}, True),
        ({"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}, True),
        ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"}, True),
        ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}, False),
        ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"}, False),
        ({"Sec-Fetch-Site": "Cross-Site", "Sec-Fetch-Mode": "cors"}, False),
        ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, False),
    ],
)
def test_editor_page_token_by_fetch_metadata(headers: dict[str, str], allowed: bool) -> None:
    """Cross-site, or same-site other than a navigation: no token; anything else (or no metadata): a token."""
    assert page_may_carry_token(CIMultiDict(headers)) is allowed


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "none"}, True),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        # A browser without Fetch Metadata: judged by Origin.
        ({}, True),
        ({"Origin": "http://shop.example:8080"}, True),
        ({"Origin": "https://shop.example"}, True),
        ({"Origin": "http://evil.example:8080"}, False),
        ({"Origin": "http://shop.example:8081"}, False),
        ({"Origin": "null"}, False),
        # Metadata wins over an Origin that would pass.
        ({"Sec-Fetch-Site": "cross-site", "Origin": "http://shop.example:8080"}, False),
    ],
)
def test_token_endpoint_answers_only_same_origin(headers: dict[str, str], allowed: bool) -> None:
    """same-origin or none by Fetch Metadata; without it, no Origin or the request's own host."""
    authority = "shop.example" if headers.get("Origin") == "https://shop.example" else "shop.example:8080"
    assert token_request_allowed(CIMultiDict(headers), authority) is allowed


def test_a_default_port_is_the_same_origin() -> None:
    """Origin without a port and a Host with :443 name one origin."""
    assert token_request_allowed(CIMultiDict({"Origin": "https://shop.example"}), "shop.example:443")


def test_strip_cors_removes_every_read_permission() -> None:
    """Allow-Origin, -Credentials and -Expose-Headers go (every copy); other headers stay."""
    headers = CIMultiDict(
        [
            ("Access-Control-Allow-Origin", "https://evil.example"),
            ("access-control-allow-origin", "*"),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Expose-Headers", "X-CC-User-Token"),
            ("Vary", "Origin"),
        ]
    )
    strip_cors(headers)
    assert list(headers.items()) == [("Vary", "Origin")]
