"""Checks that span several keys; each problem names the key it is about."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from proxy.config.model import Settings, split_listen

# The longest a Redis call may take: Redis is a cache, and a page may wait for one call.
MAX_STORE_TIMEOUT_S = 1.0
# "localhost" binds the loopback address: the same one as 127.0.0.1.
_LOOPBACK = {"localhost": "127.0.0.1"}
# Addresses that take a port on every interface, so they overlap any other address on that port.
_EVERY_INTERFACE = frozenset({"0.0.0.0", "::", "*"})


def cross_check(settings: Settings) -> list[str]:
    """Return every problem that no single key's type can see (duplicates, unreachable storefronts)."""
    problems: list[str] = []
    if _listeners_overlap(settings.listen, settings.admin_listen):
        problems.append(
            f"admin_listen: {settings.admin_listen} takes the port of listen {settings.listen};"
            " the admin listener needs its own port"
        )
    if not settings.storefronts:
        problems.append("storefronts: must list at least one storefront")
    names: dict[str, int] = {}
    host_owner: dict[str, int] = {}
    selectors: dict[tuple[str, str], int] = {}
    many = len(settings.storefronts) > 1
    for index, storefront in enumerate(settings.storefronts):
        where = f"storefronts[{index}]"
        if storefront.name in names:
            problems.append(
                f"{where}.name: duplicate storefront name {storefront.name!r}"
                f" (also storefronts[{names[storefront.name]}])"
            )
        names.setdefault(storefront.name, index)
        for host in storefront.hosts:
            if host in host_owner and host_owner[host] != index:
                problems.append(
                    f"{where}.hosts: host {host!r} is also listed by storefronts[{host_owner[host]}]"
                )
            host_owner.setdefault(host, index)
        if storefront.select_header is not None:
            key = (storefront.select_header.name.lower(), storefront.select_header.value)
            if key in selectors:
                problems.append(
                    f"{where}.select_header: same header and value as storefronts[{selectors[key]}]"
                )
            selectors.setdefault(key, index)
        if storefront.select_header is not None and not storefront.trusted_networks:
            problems.append(
                f"{where}.select_header: needs trusted_networks (the header is believed from nobody else)"
            )
        if many and not storefront.hosts and storefront.select_header is None:
            problems.append(f"{where}.hosts: with several storefronts each needs hosts or select_header")
        user = storefront.user
        if user.header is not None and not storefront.trusted_networks:
            problems.append(
                f"{where}.user.header: needs trusted_networks (the header is believed from nobody else)"
            )
        if user.session_check is not None and storefront.session_cookie is None:
            problems.append(
                f"{where}.user.session_check: needs session_cookie (answers are cached per session)"
            )
    problems.extend(check_token_store(settings))
    return problems


def check_token_store(settings: Settings) -> list[str]:
    """Problems of ``token_store`` that span its keys (Redis needed, TLS, Sentinel vs Cluster)."""
    store = settings.token_store
    redis = store.redis
    if redis is None:
        if store.backend == "redis":
            return ["token_store.redis: required when token_store.backend is redis (at least its url)"]
        return []
    # A redis section is checked even while the backend is memory: switching backends later
    # must not be the moment it turns out to be unusable.
    problems: list[str] = []
    if redis.sentinel is not None and redis.cluster:
        problems.append(
            "token_store.redis.cluster: a Cluster has no Sentinel; set one of sentinel or cluster"
        )
    if redis.timeout_s > MAX_STORE_TIMEOUT_S or redis.timeout_s >= settings.customers_canvas.timeout_s:
        # A page may wait this long on Redis (once, before the breaker opens): never more than
        # a moment, and never as long as the token work it is meant to save.
        problems.append(
            f"token_store.redis.timeout_s: must be at most {MAX_STORE_TIMEOUT_S:g} s and less than"
            f" customers_canvas.timeout_s ({settings.customers_canvas.timeout_s:g} s)"
        )
    if redis.cluster and urlsplit(redis.url).path.strip("/") not in ("", "0"):
        problems.append("token_store.redis.url: a Cluster has only database 0")
    if redis.password is not None and urlsplit(redis.url).password is not None:
        problems.append("token_store.redis.password: the url has a password too; give it in one place")
    if redis.ca_file is not None:
        if urlsplit(redis.url).scheme != "rediss":
            problems.append("token_store.redis.ca_file: needs a rediss:// url (TLS)")
        if not os.access(redis.ca_file, os.R_OK):
            problems.append(f"token_store.redis.ca_file: cannot read {redis.ca_file}")
    return problems


def _listeners_overlap(listen: str, admin_listen: str) -> bool:
    """Whether the two listeners would bind one port on a shared address (port 0: the kernel picks)."""
    host, port = split_listen(listen)
    admin_host, admin_port = split_listen(admin_listen)
    if port != admin_port or port == 0:
        return False
    names = {_LOOPBACK.get(host.lower(), host.lower()), _LOOPBACK.get(admin_host.lower(), admin_host.lower())}
    return len(names) == 1 or bool({host, admin_host} & _EVERY_INTERFACE)
