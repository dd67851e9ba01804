"""Routing a request to its storefront, and the path rules."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import StorefrontSettings
from proxy.routing import PathMatcher, Router, is_sidecar_path, normalise_path


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


def test_host_match_ignores_port_and_case() -> None:
    """Host is matched without its port and case-insensitively."""
    router = Router(
        [
            (storefront("a", hosts=["shop.example.com"]), "A"),
            (storefront("b", hosts=["b.example"]), "B"),
        ]
    )
    assert router.resolve("SHOP.Example.com:8443", {}) == "A"
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
    assert router.resolve("anything:1", {}) == "ONLY"
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
    assert is_sidecar_path(path)


@pytest.mark.parametrize("path", ["/", "/.cc-sidecarx/token", "/cc-sidecar/token", "/a/.cc-sidecar/token"])
def test_other_paths_are_not_the_sidecars(path: str) -> None:
    """Look-alikes are shop paths."""
    assert not is_sidecar_path(path)
