"""Set-Cookie values of the sidecar's own cookies."""

from __future__ import annotations

import pytest

from proxy.cookies import RequestCookies, cookie_header_without, delete_cookie_value, set_cookie_value


def test_http_only_secure_cookie_with_max_age() -> None:
    """All attributes asked for are present, with Path=/ and SameSite=Lax always."""
    assert (
        set_cookie_value("cc_sidecar_guest", "anon-1.sig", http_only=True, secure=True, max_age=60)
        == "cc_sidecar_guest=anon-1.sig; HttpOnly; Max-Age=60; Path=/; SameSite=Lax; Secure"
    )


def test_script_readable_cookie_over_http() -> None:
    """Without http_only and secure the cookie has neither flag."""
    assert set_cookie_value("cc_user_token", "a.b.c", http_only=False, secure=False) == (
        "cc_user_token=a.b.c; Path=/; SameSite=Lax"
    )


def test_delete_cookie_expires_it_at_once() -> None:
    """Deleting is an empty value with Max-Age=0 on the same path."""
    assert delete_cookie_value("cc_sidecar_guest", http_only=True, secure=False) == (
        'cc_sidecar_guest=""; HttpOnly; Max-Age=0; Path=/; SameSite=Lax'
    )


HEADER = '_ga=GA1.1.1; PHPSESSID=abc123;  cc_sidecar_guest="anon-1.sig" ; flag; PHPSESSID=second; e='


def test_request_cookies_finds_a_value_by_name() -> None:
    """Values are found by exact name, trimmed, double quotes removed, the first pair winning."""
    cookies = RequestCookies(HEADER)
    assert cookies["PHPSESSID"] == "abc123"
    assert cookies["cc_sidecar_guest"] == "anon-1.sig"
    assert cookies["e"] == ""
    assert cookies.get("_ga") == "GA1.1.1"


def test_request_cookies_misses_are_misses() -> None:
    """Absent names, prefixes of names and valueless words are not cookies."""
    cookies = RequestCookies(HEADER)
    assert "SESSID" not in cookies
    assert "flag" not in cookies
    assert cookies.get("missing") is None
    assert "x" not in RequestCookies("")


def test_request_cookies_iterates_each_name_once() -> None:
    """Iteration lists the names in order, duplicates once."""
    assert list(RequestCookies(HEADER)) == ["_ga", "PHPSESSID", "cc_sidecar_guest", "e"]
    assert len(RequestCookies(HEADER)) == 4


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a=1; cc_user_token=t; b=2", "a=1; b=2"),
        ("cc_user_token=t", ""),
        ("cc_user_token=t; cc_user_token=u", ""),
        ("cc_user_token2=x; xcc_user_token=y", "cc_user_token2=x; xcc_user_token=y"),
        ("a=cc_user_token", "a=cc_user_token"),
        ("", ""),
    ],
)
def test_cookie_header_without_drops_exactly_the_named_pairs(header: str, expected: str) -> None:
    """Every pair with that exact name goes; look-alike names and values stay."""
    assert cookie_header_without(header, "cc_user_token") == expected
