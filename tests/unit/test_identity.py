"""Recognising customers: id rules, guest ids, the signed guest cookie, trusted peers."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.config import StorefrontSettings
from proxy.cookies import RequestCookies
from proxy.errors import InvalidIdentity
from proxy.identity import (
    GUEST_COOKIE,
    GuestKeys,
    GuestRecogniser,
    header_key,
    valid_customer_id,
)
from proxy.routing import TrustedNetworks

SECRET = "test-secret-0123456789abcdef"


def jar(**cookies: str) -> RequestCookies:
    """A request's cookies, as the handler reads them from its Cookie header."""
    return RequestCookies("; ".join(f"{name}={value}" for name, value in cookies.items()))


def recogniser(storefront_id: int = 1, secret: str = SECRET) -> GuestRecogniser:
    settings = StorefrontSettings.model_validate(
        {
            "name": "s",
            "storefront_id": storefront_id,
            "upstream": "http://127.0.0.1:1",
            "session_cookie": "PHPSESSID",
        }
    )
    return GuestRecogniser(settings, GuestKeys(secret))


def test_customer_id_is_trimmed() -> None:
    """Surrounding whitespace is not part of the id."""
    assert valid_customer_id("  john@wood.com \t") == "john@wood.com"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "a b",
        "x" * 201,
        "caf\u00e9",
        "tab\tinside",
        "new\nline",
        "</script>\x00",
        "anon-123",
    ],
)
def test_invalid_customer_ids_are_refused(raw: str) -> None:
    """Empty, spaced, over 200 characters, non-ASCII, control characters and the guest prefix are refused."""
    with pytest.raises(InvalidIdentity):
        valid_customer_id(raw)


@pytest.mark.parametrize("raw", [".", "..", " .. "])
def test_dot_segment_ids_are_refused(raw: str) -> None:
    """ "." and ".." (a server normalising the path would leave the user's own URL) are refused."""
    with pytest.raises(InvalidIdentity) as refused:
        valid_customer_id(raw)
    assert str(refused.value) == f"customer id {raw.strip()!r} is a path dot-segment"


@pytest.mark.parametrize(
    ("raw", "word"),
    [
        ("token", "token"),
        ("Token", "token"),
        ("MERGE-ANONYMOUS", "merge-anonymous"),
        ("\tregister ", "register"),
    ],
)
def test_route_word_ids_are_refused(raw: str, word: str) -> None:
    """An id that is a sibling route of storefront-users/{id}, in any case, is refused."""
    with pytest.raises(InvalidIdentity) as refused:
        valid_customer_id(raw)
    assert str(refused.value) == (
        f"customer id {raw.strip()!r} is reserved: storefront-users/{word} is another Storefront API operation"
    )


@pytest.mark.parametrize("raw", ["...", ".x", "x.", "tokens", "token2", "register-me", "merge_anonymous"])
def test_ids_near_the_reserved_ones_are_accepted(raw: str) -> None:
    """Only the exact dot-segments and route words are reserved; ids merely like them pass."""
    assert valid_customer_id(raw) == raw


def test_200_printable_characters_are_accepted() -> None:
    """The longest allowed id passes unchanged."""
    assert valid_customer_id("!" * 100 + "~" * 100) == "!" * 100 + "~" * 100


@pytest.mark.parametrize(
    "spelling", ["X-Shop-User", "x-shop-user", "X_SHOP_USER", "x_Shop-user", "X.Shop.User", "x~shop+user"]
)
def test_header_key_is_blind_to_case_and_separators(spelling: str) -> None:
    """Every case and every separator spelling of a header has one key."""
    assert header_key(spelling) == "x-shop-user"


def test_guest_id_is_derived_from_the_session_without_revealing_it() -> None:
    """The same session gives the same anon- id; the session id is not in it."""
    guests = recogniser()
    first = guests.guest(jar(PHPSESSID="abc123session"))
    again = guests.guest(jar(PHPSESSID="abc123session"))
    assert first.user_id == again.user_id
    assert first.user_id.startswith("anon-")
    assert "abc123session" not in first.user_id
    assert not first.from_cookie


def test_guest_ids_differ_by_storefront_and_secret() -> None:
    """One session cookie gives different guest ids in other storefronts or with another secret."""
    cookies = jar(PHPSESSID="same")
    ids = {
        recogniser(1).guest(cookies).user_id,
        recogniser(2).guest(cookies).user_id,
        recogniser(1, secret="another-secret-0123456789").guest(cookies).user_id,
    }
    assert len(ids) == 3


def test_without_a_session_a_random_guest_is_minted() -> None:
    """No session cookie: each request gets a fresh random guest id."""
    guests = recogniser()
    assert guests.guest(jar()).user_id != guests.guest(jar()).user_id


def test_valid_guest_cookie_wins_over_the_session() -> None:
    """A signed guest cookie keeps the guest's id even when the shop rotated its session."""
    guests = recogniser()
    original = guests.guest(jar(PHPSESSID="before-login")).user_id
    cookies = jar(PHPSESSID="after-login", **{GUEST_COOKIE: guests.signed(original)})
    guest = guests.guest(cookies)
    assert guest.user_id == original
    assert guest.from_cookie


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v: v.replace("anon-", "anon-0", 1),
        lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),
        lambda v: v.split(".")[0],
        lambda v: "anon-attacker." + v.split(".")[1],
        lambda v: "",
    ],
)
def test_tampered_guest_cookie_is_ignored(tamper: object) -> None:
    """A guest cookie that fails its signature is ignored; the session decides."""
    guests = recogniser()
    signed = guests.signed("anon-victim")
    value = tamper(signed)  # type: ignore[operator]
    guest = guests.guest(jar(PHPSESSID="s", **{GUEST_COOKIE: value}))
    assert guest.user_id != "anon-victim"
    assert not guest.from_cookie
    assert guests.cookie_guest(jar(**{GUEST_COOKIE: value})) is None


def test_guest_cookie_of_another_storefront_is_not_valid() -> None:
    """A cookie signed for storefront 1 is not accepted by storefront 2."""
    cookie = recogniser(1).signed("anon-x")
    assert recogniser(2).cookie_guest(jar(**{GUEST_COOKIE: cookie})) is None


def test_trusted_networks() -> None:
    """Only peers inside the networks are trusted, IPv4-mapped IPv6 included."""
    trusted = TrustedNetworks([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")])
    assert trusted.contains("10.1.2.3")
    assert trusted.contains("::ffff:10.1.2.3")
    assert trusted.contains("::1")
    assert not trusted.contains("11.0.0.1")
    assert not trusted.contains("not-an-ip")
    assert not trusted.contains(None)
    assert not TrustedNetworks([]).contains("10.0.0.1")


def test_a_session_cookie_sent_twice_names_no_session() -> None:
    """``PHPSESSID=a; PHPSESSID=b``: the shop may read either, so no session is derived from it."""
    guests = recogniser()
    cookies = RequestCookies("PHPSESSID=victim; PHPSESSID=attacker")
    assert guests.session_value(cookies) is None
    assert guests.session_key(cookies) is None
    assert guests.guest(cookies).user_id not in (
        guests.guest(jar(PHPSESSID="victim")).user_id,
        guests.guest(jar(PHPSESSID="attacker")).user_id,
    )


def test_a_guest_cookie_sent_twice_names_no_guest() -> None:
    """A planted guest cookie beside the browser's own (or alone twice) is ambiguous: neither is
    believed, the session decides, and no merge is made from it."""
    guests = recogniser()
    planted, own = guests.signed("anon-attacker"), guests.signed("anon-victim")
    cookies = RequestCookies(f"{GUEST_COOKIE}={planted}; {GUEST_COOKIE}={own}; PHPSESSID=victim-session")
    guest = guests.guest(cookies)
    assert (guest.user_id, guest.from_cookie) == (
        guests.guest(jar(PHPSESSID="victim-session")).user_id,
        False,
    )
    assert guests.cookie_guest(cookies) is None
