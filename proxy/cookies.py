"""Set-Cookie values of the sidecar's own cookies (the guest cookie, the token cookie)."""

from __future__ import annotations

from http.cookies import SimpleCookie


def set_cookie_value(
    name: str,
    value: str,
    *,
    http_only: bool,
    secure: bool,
    max_age: int | None = None,
) -> str:
    """One Set-Cookie header value with Path=/ and SameSite=Lax; ``max_age=0`` deletes it."""
    jar: SimpleCookie = SimpleCookie()
    jar[name] = value
    morsel = jar[name]
    morsel["path"] = "/"
    morsel["samesite"] = "Lax"
    if http_only:
        morsel["httponly"] = True
    if secure:
        morsel["secure"] = True
    if max_age is not None:
        morsel["max-age"] = max_age
    return morsel.OutputString()


def delete_cookie_value(name: str, *, http_only: bool, secure: bool) -> str:
    """A Set-Cookie header value that removes the cookie from the browser."""
    return set_cookie_value(name, "", http_only=http_only, secure=secure, max_age=0)
