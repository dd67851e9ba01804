"""Tokens only for the shop's own pages: Fetch Metadata, Origin, and the shop's CORS headers.

A customer token is readable by whatever reads the response it is in. Browsers let another
origin read a credentialed response when the shop's CORS headers allow it (a shop reflecting
Origin with ``Access-Control-Allow-Credentials: true`` is a common legacy setting), so:

- a response that carries a token (or a guest's id) never carries the shop's
  ``Access-Control-Allow-Origin`` / ``-Allow-Credentials`` / ``-Expose-Headers``
  (:func:`strip_cors`): no other origin can read it whatever the shop allows;
- an editor page requested as Fetch Metadata marks ``Sec-Fetch-Site: cross-site``, or
  ``same-site`` other than a navigation (a sibling origin's ``fetch()``), is served without
  a token (:func:`page_may_carry_token`). A customer arriving by a link from another site
  gets the page without one too; its page script then asks the token endpoint, which is
  same-origin;
- the token endpoint answers only the shop's own pages (:func:`token_request_allowed`):
  ``Sec-Fetch-Site: same-origin``, or ``none`` (the customer typed the URL or opened a
  bookmark: no page can make a browser send that). A browser too old to send Fetch Metadata
  (before 2020-2023, by engine) is judged by ``Origin``: absent (a same-origin GET of an old
  browser, or not a browser) or naming the host the request was sent to. Its answers carry
  ``X-Content-Type-Options: nosniff`` and ``Cross-Origin-Resource-Policy: same-origin``
  (:data:`TOKEN_ENDPOINT_HEADERS`), so no page of another origin can load it as a script,
  style or image either.

Headers a client leaves out cannot make a request more trusted than a browser's own would be:
a client that is not a browser has no victim's cookies to send.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from multidict import CIMultiDict

from proxy.routing import parse_host

SEC_FETCH_SITE = "Sec-Fetch-Site"
SEC_FETCH_MODE = "Sec-Fetch-Mode"
ORIGIN = "Origin"
# What lets another origin read a response (or its headers) with the browser's credentials.
CORS_READ_HEADERS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Expose-Headers",
)
TOKEN_ENDPOINT_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_DEFAULT_PORTS = (":80", ":443")


def page_may_carry_token(headers: Mapping[str, str]) -> bool:
    """Whether an editor page requested with these headers may get its token (see the module docstring)."""
    site = headers.get(SEC_FETCH_SITE)
    if site is None:
        return True
    site = site.strip().lower()
    if site == "cross-site":
        return False
    if site == "same-site":
        return headers.get(SEC_FETCH_MODE, "").strip().lower() == "navigate"
    return True


def token_request_allowed(headers: Mapping[str, str], authority: str | None) -> bool:
    """Whether the token endpoint answers this request: the shop's own pages only.

    ``authority`` is the normalised ``host[:port]`` the request was routed by (None: it had none).
    """
    site = headers.get(SEC_FETCH_SITE)
    if site is not None:
        return site.strip().lower() in ("same-origin", "none")
    origin = headers.get(ORIGIN)
    if origin is None:
        return True
    if authority is None:
        return False
    netloc = urlsplit(origin.strip()).netloc
    named = parse_host(netloc) if netloc else None
    return named is not None and _without_default_port(named.authority) == _without_default_port(authority)


def strip_cors(headers: CIMultiDict[str]) -> None:
    """Remove the shop's CORS read permissions from a response that carries a customer's identity."""
    for name in CORS_READ_HEADERS:
        headers.popall(name, None)


def _without_default_port(authority: str) -> str:
    for port in _DEFAULT_PORTS:
        if authority.endswith(port):
            return authority[: -len(port)]
    return authority
