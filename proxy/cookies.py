"""Cookies: the request's Cookie header read by name, and the sidecar's own Set-Cookie values."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from http.cookies import SimpleCookie


class RequestCookies(Mapping[str, str]):
    """The Cookie header as a read-only mapping, each value found by name without parsing the rest.

    A shop's Cookie header often carries dozens of pairs (analytics, consent); parsing them all
    costs tens of microseconds per request, while the sidecar needs at most two (the session and
    the guest cookie). The first pair with a name wins; a value in double quotes loses them.
    """

    __slots__ = ("_header",)

    def __init__(self, header: str) -> None:
        self._header = header

    def _find(self, name: str) -> str | None:
        if name not in self._header:  # the common case: not there at all
            return None
        for pair in self._header.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
        return None

    def __getitem__(self, name: str) -> str:
        value = self._find(name)
        if value is None:
            raise KeyError(name)
        return value

    # Mapping's own would go through __getitem__ and a KeyError: costly for a cookie not there.
    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        value = self._find(name)
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for pair in self._header.split(";"):
            key, sep, _ = pair.partition("=")
            key = key.strip()
            if sep and key and key not in seen:
                seen.add(key)
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


def cookie_header_without(header: str, name: str) -> str:
    """A Cookie header value less every pair named ``name`` ("" when nothing is left)."""
    if name not in header:
        return header
    kept = [pair for pair in header.split(";") if pair.partition("=")[0].strip() != name]
    return ";".join(kept).strip()


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
