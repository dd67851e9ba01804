"""Set-Cookie values of the sidecar's own cookies."""

from __future__ import annotations

from proxy.cookies import delete_cookie_value, set_cookie_value


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
