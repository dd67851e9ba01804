"""Set-Cookie values of the sidecar's own cookies."""

from __future__ import annotations

import pytest

from proxy.cookies import (
    CookieSet,
    RequestCookies,
    cookie_header_without,
    cookie_set,
    delete_cookie_value,
    over_https,
    replaces_session,
    set_cookie_value,
)


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


def test_only_gives_a_cookie_sent_once() -> None:
    """The value of a cookie the header carries once; quotes lost, like the mapping's."""
    assert RequestCookies('a=1; PHPSESSID="s1"; b=2').only("PHPSESSID") == "s1"


@pytest.mark.parametrize("header", ["PHPSESSID=a; PHPSESSID=b", "PHPSESSID=a; x=1; PHPSESSID=a", "x=1"])
def test_only_gives_nothing_for_a_cookie_sent_twice_or_not_at_all(header: str) -> None:
    """Twice is ambiguous (PHP reads the first, Django the last), even with the same value twice."""
    assert RequestCookies(header).only("PHPSESSID") is None


NOW = 1_790_000_000.0


@pytest.mark.parametrize(
    ("set_cookies", "change"),
    [
        ([], None),
        (["other=1; Path=/"], None),
        (["PHPSESSID=new; Path=/; HttpOnly"], CookieSet("new")),
        (["PHPSESSID=first", "PHPSESSID=second"], CookieSet("second")),
        (["PHPSESSID=; Path=/"], CookieSet(None)),
        (["PHPSESSID=deleted; expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; path=/"], CookieSet(None)),
        (["PHPSESSID=deleted; expires=Thu, 01 Jan 1970 00:00:01 GMT; path=/"], CookieSet(None)),
        (["PHPSESSID=kept; Max-Age=3600; expires=Thu, 01 Jan 1970 00:00:01 GMT"], CookieSet("kept")),
        (["PHPSESSID=later; expires=Wed, 01 Jan 2070 00:00:00 GMT"], CookieSet("later")),
        (["PHPSESSID=odd; expires=not a date"], CookieSet("odd")),
    ],
)
def test_cookie_set_says_what_a_response_does_to_a_cookie(
    set_cookies: list[str], change: CookieSet | None
) -> None:
    """The last Set-Cookie of the name counts; empty, Max-Age <= 0 or a past Expires (Max-Age first) deletes."""
    assert cookie_set(set_cookies, "PHPSESSID", NOW) == change


def test_over_https_believes_any_hop() -> None:
    """Any item of any X-Forwarded-Proto, or a Forwarded proto, saying https is enough."""
    assert over_https(["http", "http, HTTPS"], [])
    assert over_https([], ['for=192.0.2.1;proto="https", for=10.0.0.1;proto=http'])
    assert not over_https(["http"], ["for=192.0.2.1;proto=http"])
    assert not over_https([], [])


def test_replaces_session_when_deleted_or_set_to_another_value() -> None:
    """Deleted, or set to a new value: replaced; set to the value the browser holds, or untouched: not."""
    assert replaces_session(["PHPSESSID=; Max-Age=0"], "PHPSESSID", "a", 0)
    assert replaces_session(["PHPSESSID=b; Path=/"], "PHPSESSID", "a", 0)
    assert replaces_session(["PHPSESSID=b; Path=/"], "PHPSESSID", None, 0)
    assert not replaces_session(["PHPSESSID=a; Path=/"], "PHPSESSID", "a", 0)
    assert not replaces_session(["other=1"], "PHPSESSID", "a", 0)
