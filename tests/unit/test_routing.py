"""Routing a request to its storefront, and the path rules."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.config import StorefrontSettings
from proxy.routing import (
    _NEEDS_NORMALISING,
    HostName,
    OriginForm,
    PathMatcher,
    Router,
    has_encoded_separator,
    is_sidecar_path,
    needs_normalising,
    normalise_path,
    origin_form,
    parse_host,
)


def storefront(name: str, **kwargs: Any) -> StorefrontSettings:
    return StorefrontSettings.model_validate(
        {"name": name, "storefront_id": 1, "upstream": "http://127.0.0.1:1", **kwargs}
    )


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("/editor/mug", True),
        ("/editor/", True),
        ("/editor/mug/extra", False),
        ("/product/42/personalize", True),
        ("/product/42/other/personalize", False),
        ("/deep/a/b/c/edit", True),
        ("/Editor/mug", False),
        ("/editorx/mug", False),
    ],
)
def test_globs_single_star_stays_in_segment_double_star_crosses(path: str, matches: bool) -> None:
    """``*`` matches within one segment, ``**`` across segments; matching is exact and case-sensitive."""
    matcher = PathMatcher(["/editor/*", "/product/*/personalize", "/deep/**/edit"])
    assert matcher.matches(path) is matches


def test_glob_special_characters_are_literal() -> None:
    """Regex metacharacters in a glob match only themselves."""
    matcher = PathMatcher(["/a.b/(x)+"])
    assert matcher.matches("/a.b/(x)+")
    assert not matcher.matches("/aXb/(x)+")


def test_no_globs_match_nothing() -> None:
    """An empty editor path list matches no path."""
    assert not PathMatcher([]).matches("/")


def test_host_match_is_by_the_parsed_name() -> None:
    """The router matches parse_host()'s name (lower case, no port) against the configured hosts."""
    router = Router(
        [
            (storefront("a", hosts=["Shop.Example.com."]), "A"),
            (storefront("b", hosts=["b.example"]), "B"),
        ]
    )
    host = parse_host("SHOP.Example.com:8443")
    assert host is not None
    assert router.resolve(host.name, {}) == "A"
    assert router.resolve("b.example", {}) == "B"
    assert router.resolve("c.example", {}) is None
    assert router.resolve(None, {}) is None


def select_router() -> Router[str]:
    return Router(
        [
            (storefront("a", hosts=["shop.example.com"]), "A"),
            (
                storefront(
                    "b",
                    select_header={"name": "X-CC-Storefront", "value": "b"},
                    trusted_networks=["10.0.0.0/8"],
                ),
                "B",
            ),
        ]
    )


def test_select_header_from_a_trusted_peer_wins_over_host() -> None:
    """The ingress (a trusted peer) picks the storefront by header whatever the Host."""
    router = select_router()
    assert router.resolve("shop.example.com", {"X-CC-Storefront": "b"}, "10.1.2.3") == "B"
    assert router.resolve("shop.example.com", {"X-CC-Storefront": "zzz"}, "10.1.2.3") == "A"


def test_select_header_from_anyone_else_is_ignored() -> None:
    """A client outside trusted_networks can't choose a storefront by header: the Host decides."""
    router = select_router()
    assert router.resolve("shop.example.com", {"X-CC-Storefront": "b"}, "203.0.113.9") == "A"
    assert router.resolve("other.example", {"X-CC-Storefront": "b"}, None) is None


def test_single_storefront_without_hosts_takes_everything() -> None:
    """One storefront listing no hosts gets every request."""
    router = Router([(storefront("only"), "ONLY")])
    assert router.resolve("anything", {}) == "ONLY"
    assert router.resolve(None, {}) == "ONLY"


def test_single_storefront_with_hosts_refuses_others() -> None:
    """One storefront that lists hosts gets only those."""
    router = Router([(storefront("only", hosts=["a.example"]), "ONLY")])
    assert router.resolve("b.example", {}) is None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/a//b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../x", "/x"),
        ("/a/b/", "/a/b/"),
        ("/plain", "/plain"),
    ],
)
def test_normalise_path(raw: str, normal: str) -> None:
    """Dot segments and doubled slashes collapse like a shop's router would."""
    assert normalise_path(raw) == normal


@pytest.mark.parametrize(
    "path",
    [
        "/.cc-sidecar/token",
        "/.CC-Sidecar/token",
        "//.cc-sidecar/token",
        "/x/../.cc-sidecar/a",
        "/.cc-sidecar",
        "/./.cc-sidecar/",
    ],
)
def test_sidecar_path_in_any_spelling(path: str) -> None:
    """Every spelling that reaches /.cc-sidecar/ is the sidecar's own."""
    assert is_sidecar_path(normalise_path(path))


def test_a_byte_no_decoding_makes_a_character_of_stays_a_byte_of_the_path() -> None:
    """A non-UTF-8 byte (%FF) left after one decoding survives the next; the dots still collapse."""
    assert normalise_path("/%FF/%252e%252e/.cc-sidecar/token") == "/.cc-sidecar/token"


def test_a_lone_surrogate_is_a_path_no_server_reads_alike() -> None:
    """%uD800 (IIS) names half a UTF-16 pair, no character: the path cannot be normalised (a 400)."""
    assert normalise_path("/%ud800/x") is None


@pytest.mark.parametrize("path", ["/", "/.cc-sidecarx/token", "/cc-sidecar/token", "/a/.cc-sidecar/token"])
def test_other_paths_are_not_the_sidecars(path: str) -> None:
    """Look-alikes are shop paths."""
    assert not is_sidecar_path(normalise_path(path))


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/.cc-sidecar;x/token", "/.cc-sidecar/token"),
        ("/.cc-sidecar./token", "/.cc-sidecar/token"),
        ("/.cc-sidecar /token", "/.cc-sidecar/token"),
        ("/x\\..\\.cc-sidecar/token", "/.cc-sidecar/token"),
        ("/%2ecc-sidecar/token", "/.cc-sidecar/token"),
        ("/editor/..;/account", "/account"),
        ("/editor/mug;jsessionid=1", "/editor/mug"),
        ("/editor/;v=1", "/editor/"),
        ("/a/b/..", "/a/"),
        ("/editor/mug.", "/editor/mug"),
        ("/.cc-sidecar\t/token", "/.cc-sidecar/token"),
        ("/.cc-sidecar::$DATA/token", "/.cc-sidecar/token"),
        ("/%c0%aecc-sidecar/token", "/.cc-sidecar/token"),
        ("/x/%c0%ae%c0%ae/.cc-sidecar/token", "/.cc-sidecar/token"),
        ("/%u002ecc-sidecar/token", "/.cc-sidecar/token"),
        ("/.cc-sidecar%u002ftoken", "/.cc-sidecar/token"),
        ("/%25252ecc-sidecar/token", "/.cc-sidecar/token"),
        ("/plain/path", "/plain/path"),
    ],
)
def test_normalise_path_undoes_what_lenient_servers_undo(path: str, normal: str) -> None:
    """Backslashes, ``;`` parameters, ``:`` streams, trailing dots and whitespace, and further decodings go as a lenient server's do."""
    assert normalise_path(path) == normal


@pytest.mark.parametrize(
    ("target", "hidden"),
    [
        ("/editor/..%5cprofile", True),
        ("/editor/a%2Fb", True),
        ("/editor/mug?next=%2Fcart", False),
        ("/editor/caf%C3%A9", False),
        ("/editor/mug", False),
    ],
)
def test_an_encoded_separator_in_the_path_is_found(target: str, hidden: bool) -> None:
    """An encoded / or \\ in the path (not the query) leaves the segments in doubt."""
    assert has_encoded_separator(target) is hidden


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("shop.example.com", HostName("shop.example.com", "shop.example.com")),
        ("Shop.Example.COM:8080", HostName("shop.example.com", "shop.example.com:8080")),
        ("shop.example.com.", HostName("shop.example.com", "shop.example.com")),
        ("shop.example.com:", HostName("shop.example.com", "shop.example.com")),
        ("shop.example.com:080", HostName("shop.example.com", "shop.example.com:80")),
        ("127.0.0.1:8000", HostName("127.0.0.1", "127.0.0.1:8000")),
        ("[::1]:8000", HostName("[::1]", "[::1]:8000")),
        ("internal_host", HostName("internal_host", "internal_host")),
    ],
)
def test_valid_hosts_are_normalised(value: str, parsed: HostName) -> None:
    """A host name or IP literal with an optional port: lower case, one trailing dot and an empty port dropped."""
    assert parse_host(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "g.test:@evil.example",
        "g.test:80 evil.example",
        "g.test:/evil.example",
        "g.test:1,evil.example",
        "user@g.test",
        "g.test:x",
        "g.test:65536",
        "g.test:123456",
        "",
        " g.test",
        "g..test",
        ".g.test",
        "[::1",
        "[zz::1]",
        "g.test/",
        "g.test\\x",
        "g%2etest",
    ],
)
def test_anything_else_is_not_a_host(value: str) -> None:
    """Every other spelling (userinfo, a second host, a path, a list, a bad port) is refused."""
    assert parse_host(value) is None


@pytest.mark.parametrize(
    ("target", "form"),
    [
        ("/a?b", OriginForm(None, "/a?b")),
        ("*", OriginForm(None, "*")),
        ("http://g.test/a?b", OriginForm("g.test", "/a?b")),
        ("HTTP://g.test:81", OriginForm("g.test:81", "/")),
        ("https://g.test?x=1", OriginForm("g.test", "/?x=1")),
        ("http://u@evil/a", OriginForm("u@evil", "/a")),
    ],
)
def test_targets_become_origin_form(target: str, form: OriginForm) -> None:
    """Absolute-form targets lose scheme and authority (which they name); origin form stays as sent."""
    assert origin_form(target) == form


@pytest.mark.parametrize("target", ["g.test:443", "ftp://g.test/a", "javascript:alert(1)", "a/b"])
def test_other_target_forms_are_refused(target: str) -> None:
    """Authority form and other schemes are not forwarded."""
    assert origin_form(target) is None


# Paths made mostly of the characters the rules are about, and now and then any character.
PATH_TEXT = st.text(
    st.sampled_from(list("/. \\;:%ab\t\x1f\x85\xa0\u2028")) | st.characters(blacklist_categories=()),
    max_size=12,
)
# The rule as it was first written, before it and its quick test were made faster.
FIRST_RULE = re.compile(r"[\\;:%]|/\.|[.\s](?:/|$)|//")


@given(PATH_TEXT)
@example("/a /b")
@example("/a ")
@example("/a./b")
@example("/\x1f/")
def test_the_quick_test_for_a_path_needing_normalising_is_the_first_rule(path: str) -> None:
    """Printable or not, the substring tests and the shorter regex say what the first regex said."""
    expected = FIRST_RULE.search(path) is not None
    assert (needs_normalising(path), _NEEDS_NORMALISING.search(path) is not None) == (expected, expected)


def test_the_only_printable_whitespace_is_the_space() -> None:
    """What the quick test stands on: any other character the regex's \\s matches is not printable."""
    printable = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isprintable())
    assert re.findall(r"\s", printable) == [" "]
