"""The page script's tag and the nonce it takes from the shop's Content-Security-Policy."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.page_script import TAG_WITHOUT_NONCE, script_nonce, script_tag


@pytest.mark.parametrize(
    ("policies", "nonce"),
    [
        (["script-src 'nonce-r4nd0m' 'strict-dynamic'; object-src 'none'"], "r4nd0m"),
        (["default-src 'self' 'nonce-QUJD+/x_y-z=='"], "QUJD+/x_y-z=="),
        (["SCRIPT-SRC\t'NONCE-abc'"], "abc"),
        (["object-src 'none'; script-src-elem 'nonce-elem'; script-src 'nonce-other'"], "elem"),
        (["img-src *", "script-src 'nonce-second-header'"], "second-header"),
        (["img-src *, script-src 'nonce-second-policy'"], "second-policy"),
        (["script-src 'nonce-first'; script-src 'nonce-ignored'"], "first"),
        (["  script-src   'self'   'nonce-spaced'  ;"], "spaced"),
    ],
)
def test_the_nonce_comes_from_the_directive_that_governs_script_elements(
    policies: list[str], nonce: str
) -> None:
    """script-src-elem, else script-src, else default-src names the nonce, in any header or policy."""
    assert script_nonce(policies) == nonce


@pytest.mark.parametrize(
    "policies",
    [
        [],
        [""],
        ["script-src 'sha256-B2yPHKaXnvFWtRChIbabYmUBFZdVfKKXHbWtWidDVF8=' 'strict-dynamic'"],
        ["script-src 'self'; default-src 'nonce-only-for-default'"],
        ["script-src 'unsafe-inline'"],
        ["img-src 'nonce-not-for-scripts'"],
        ["script-src 'nonce-'"],
        ["script-src 'nonce-a\"b'"],
        ["script-src 'nonce-a b'"],
        ["script-src nonce-unquoted"],
        ["script-src 'nonce-x===' "],
        [";;;,,,"],
    ],
)
def test_a_policy_without_a_usable_nonce_gives_none(policies: list[str]) -> None:
    """Hashes only, a nonce on another directive or shadowed by script-src, or a malformed nonce: none."""
    assert script_nonce(policies) is None


def test_the_tag_without_a_nonce_is_the_contracts() -> None:
    """No nonce: exactly the contract's tag."""
    assert script_tag(None) == b'<script src="/.cc-sidecar/v1/cc-user.js"></script>'
    assert script_tag(None) == TAG_WITHOUT_NONCE


def test_the_tag_carries_the_nonce_as_an_attribute() -> None:
    """A nonce goes into a nonce attribute, as the policy spelled it."""
    assert (
        script_tag("QUJD+/x_y-z==")
        == b'<script src="/.cc-sidecar/v1/cc-user.js" nonce="QUJD+/x_y-z=="></script>'
    )


def test_a_value_that_is_not_a_nonce_is_refused() -> None:
    """Anything outside base64/base64url never reaches the attribute."""
    with pytest.raises(ValueError, match="not a CSP nonce"):
        script_tag('x" onload="alert(1)')


@given(st.text())
def test_no_header_value_can_leave_the_nonce_attribute(value: str) -> None:
    """Whatever the header holds, the tag is the fixed tag with at most a base64 nonce attribute."""
    tag = script_tag(script_nonce([f"script-src 'nonce-{value}'", value]))
    assert re.fullmatch(
        rb'<script src="/\.cc-sidecar/v1/cc-user\.js"( nonce="[A-Za-z0-9+/_-]+={0,2}")?></script>', tag
    )
