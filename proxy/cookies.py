"""Cookies: the request's Cookie header read by name, and the sidecar's own Set-Cookie values."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from email.utils import parsedate_to_datetime
from http.cookies import SimpleCookie
from typing import NamedTuple


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

    def only(self, name: str) -> str | None:
        """The value of ``name`` if the header carries it exactly once, else None.

        A cookie sent twice (``PHPSESSID=a; PHPSESSID=b``, as a planted parent-domain cookie
        makes it) is ambiguous: servers disagree on which one wins (PHP the first, Django and
        aiohttp the last), so nothing may be decided on it.
        """
        if name not in self._header:
            return None
        found: str | None = None
        for pair in self._header.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == name:
                if found is not None:
                    return None
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                found = value
        return found

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


class CookieSet(NamedTuple):
    """What a response does to one cookie: sets it to ``value``, or (None) deletes it."""

    value: str | None


def cookie_set(set_cookies: Iterable[str], name: str, now: float) -> CookieSet | None:
    """What a response's Set-Cookie header values do to cookie ``name``; None if they leave it alone.

    The last one for ``name`` counts. An empty value, a Max-Age of 0 or less, or an Expires in
    the past (``now``, Unix seconds; Max-Age wins over Expires, RFC 6265 5.3) deletes it.
    """
    found: CookieSet | None = None
    for line in set_cookies:
        pair, _, attributes = line.partition(";")
        key, sep, value = pair.partition("=")
        if not sep or key.strip() != name:
            continue
        value = value.strip()
        found = CookieSet(value if value and not _expired(attributes, now) else None)
    return found


def _expired(attributes: str, now: float) -> bool:
    """Whether a Set-Cookie's attributes end the cookie at once."""
    expires: float | None = None
    for attribute in attributes.split(";"):
        key, _, value = attribute.partition("=")
        key = key.strip().lower()
        if key == "max-age":
            try:
                return int(value.strip()) <= 0
            except ValueError:
                continue
        if key == "expires":
            try:
                expires = parsedate_to_datetime(value.strip()).timestamp()
            except (TypeError, ValueError, IndexError):
                continue
    return expires is not None and expires <= now


def over_https(forwarded_protos: Iterable[str], forwarded: Iterable[str]) -> bool:
    """Whether any hop says the browser came over https: any ``X-Forwarded-Proto: https`` (any item
    of any copy) or ``Forwarded: proto=https``, whoever sent it.

    Believing an untrusted hop here only makes a cookie stricter (``Secure``): a client that
    claims https over plain http loses its own cookies, nobody else's.
    """
    for value in forwarded_protos:
        if any(item.strip().lower() == "https" for item in value.split(",")):
            return True
    for value in forwarded:
        for element in value.split(","):
            for pair in element.split(";"):
                key, _, proto = pair.partition("=")
                if key.strip().lower() == "proto" and proto.strip().strip('"').lower() == "https":
                    return True
    return False


def replaces_session(set_cookies: Iterable[str], name: str, current: str | None, now: float) -> bool:
    """Whether these Set-Cookie values delete cookie ``name`` or set it to a value other than ``current``."""
    change = cookie_set(set_cookies, name, now)
    return change is not None and (change.value is None or change.value != current)
