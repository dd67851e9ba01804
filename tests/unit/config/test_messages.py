"""check-config's messages: one catalogue of bad configurations, each with its exact message.

Every message names the key (list items with their index) and speaks YAML ("a list",
"host:port"), never pydantic's Python ("valid tuple").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import main
from proxy.config import parse_settings
from tests.unit.config.test_load import ENV, VALID, problems, with_change

# (what is wrong, the change to the valid document, every message check-config prints)
CATALOGUE: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "a network where a list belongs",
        {"storefronts.0.trusted_networks": "127.0.0.1/32"},
        ["storefronts[0].trusted_networks: must be a list, e.g. [127.0.0.1/32]"],
    ),
    (
        "an inject mode where a list belongs",
        {"storefronts.0.inject": "html"},
        ["storefronts[0].inject: must be a list, e.g. [html]"],
    ),
    (
        "a bare port as listen",
        {"listen": 28080},
        ["listen: must be host:port (e.g. 0.0.0.0:28080)"],
    ),
    (
        "two bad networks in one list",
        {"storefronts.0.trusted_networks": ["127.0.0.1/33", "300.0.0.0/8"]},
        [
            "storefronts[0].trusted_networks[0]: not a network in CIDR notation: '127.0.0.1/33'",
            "storefronts[0].trusted_networks[1]: not a network in CIDR notation: '300.0.0.0/8'",
        ],
    ),
    (
        "a network with host bits set",
        {"storefronts.0.trusted_networks": ["10.0.0.0/8", "10.0.0.1/8"]},
        ["storefronts[0].trusted_networks[1]: 10.0.0.1/8: host bits set; did you mean 10.0.0.0/8?"],
    ),
    (
        "an IPv6 network with host bits set",
        {"storefronts.0.trusted_networks": ["fd00::1/64"]},
        ["storefronts[0].trusted_networks[0]: fd00::1/64: host bits set; did you mean fd00::/64?"],
    ),
    (
        "an unterminated ${",
        {"customers_canvas.client_secret": "${CC_CLIENT_SECRET"},
        ["customers_canvas.client_secret: unterminated ${ (write ${NAME} or ${NAME:-default})"],
    ),
    (
        "an unterminated ${ after a good reference",
        {"storefronts.0.upstream": "http://${CC_CLIENT_SECRET}:${PORT"},
        ["storefronts[0].upstream: unterminated ${ (write ${NAME} or ${NAME:-default})"],
    ),
    (
        "listen equal to admin_listen",
        {"listen": "0.0.0.0:8080", "admin_listen": "0.0.0.0:8080"},
        [
            "admin_listen: 0.0.0.0:8080 takes the port of listen 0.0.0.0:8080; the admin listener needs its own port"
        ],
    ),
    (
        "admin_listen on loopback with the port listen takes on every interface",
        {"listen": "0.0.0.0:8080", "admin_listen": "127.0.0.1:8080"},
        [
            "admin_listen: 127.0.0.1:8080 takes the port of listen 0.0.0.0:8080; the admin listener needs its own port"
        ],
    ),
    (
        "listen on every IPv6 interface, admin_listen on the same port",
        {"listen": "[::]:9000", "admin_listen": "10.1.2.3:9000"},
        [
            "admin_listen: 10.1.2.3:9000 takes the port of listen [::]:9000; the admin listener needs its own port"
        ],
    ),
    (
        "listen on localhost, admin_listen on 127.0.0.1 with the same port",
        {"listen": "localhost:8080", "admin_listen": "127.0.0.1:8080"},
        [
            "admin_listen: 127.0.0.1:8080 takes the port of listen localhost:8080; the admin listener needs its own port"
        ],
    ),
    (
        "a session check URL that is neither a path nor a URL",
        {
            "storefronts.0.session_cookie": "PHPSESSID",
            "storefronts.0.user": {"session_check": {"url": "whoami.php", "id_field": "id"}},
        },
        ["storefronts[0].user.session_check.url: must be a path starting with / or an http(s) URL"],
    ),
    (
        "a misspelt storefront key",
        {"storefronts.0.edtor_paths": ["/x"]},
        ["storefronts[0].edtor_paths: unknown key; did you mean editor_paths?"],
    ),
    (
        "a misspelt top-level key",
        {"admin_lsiten": "0.0.0.0:9091"},
        ["admin_lsiten: unknown key; did you mean admin_listen?"],
    ),
    (
        "a misspelt key of a nested mapping",
        {"customers_canvas.breaker.failure": 3},
        ["customers_canvas.breaker.failure: unknown key; did you mean failures?"],
    ),
    (
        "an unknown key like no known one",
        {"storefronts.0.colour": "blue"},
        ["storefronts[0].colour: unknown key"],
    ),
    (
        "an inject mode that does not exist",
        {"storefronts.0.inject": ["html", "htm"]},
        ["storefronts[0].inject[1]: must be one of html, header, cookie, script, not 'htm'"],
    ),
    (
        "editor paths without / and of the wrong type",
        {"storefronts.0.editor_paths": ["editor/*", "/ok", 5]},
        [
            "storefronts[0].editor_paths[0]: must be a path starting with /",
            "storefronts[0].editor_paths[2]: must be a path starting with /",
        ],
    ),
    (
        "two bad hosts",
        {"storefronts.0.hosts": ["a b", "ok.example", "c/d"]},
        [
            "storefronts[0].hosts[0]: not a host name: 'a b'",
            "storefronts[0].hosts[2]: not a host name: 'c/d'",
        ],
    ),
    (
        "a storefront id that is a word",
        {"storefronts.0.storefront_id": "twelve"},
        ["storefronts[0].storefront_id: must be a whole number"],
    ),
    (
        "a storefront id of 0",
        {"storefronts.0.storefront_id": 0},
        ["storefronts[0].storefront_id: must be at least 1"],
    ),
    (
        "a timeout that is a word",
        {"customers_canvas.timeout_s": "fast"},
        ["customers_canvas.timeout_s: must be a number"],
    ),
    (
        "a timeout of 0",
        {"customers_canvas.timeout_s": 0},
        ["customers_canvas.timeout_s: must be greater than 0"],
    ),
    (
        "a flag that is neither true nor false",
        {"access_log": "maybe"},
        ["access_log: must be true or false"],
    ),
    (
        "a log level that does not exist",
        {"log_level": "VERBOSE"},
        ["log_level: must be one of DEBUG, INFO, WARNING, ERROR, not 'VERBOSE'"],
    ),
    (
        "a section that is a string",
        {"customers_canvas": "https://api.example"},
        ["customers_canvas: must be a mapping (key: value lines)"],
    ),
    (
        "a storefront that is a string",
        {"storefronts": ["main"]},
        ["storefronts[0]: must be a mapping (key: value lines)"],
    ),
    (
        "storefronts as one mapping instead of a list",
        {"storefronts": {"name": "main"}},
        ["storefronts: must be a list"],
    ),
    (
        "a storefront name with a space",
        {"storefronts.0.name": "main shop"},
        ["storefronts[0].name: may contain only letters, digits, '_', '.' and '-'"],
    ),
    (
        "an identity header that is a number",
        {"storefronts.0.user": {"header": 5}},
        ["storefronts[0].user.header: must be an HTTP header name"],
    ),
    (
        "a client secret that is a number (its value is not repeated)",
        {"customers_canvas.client_secret": 12345},
        ["customers_canvas.client_secret: must be a string"],
    ),
    (
        "an empty client id",
        {"customers_canvas.client_id": ""},
        ["customers_canvas.client_id: must not be empty"],
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [pytest.param(changes, expected, id=what) for what, changes, expected in CATALOGUE],
)
def test_catalogue_of_bad_configs(changes: dict[str, Any], expected: list[str]) -> None:
    """Each bad configuration gives exactly its messages, in YAML words, each naming its key."""
    document = copy.deepcopy(VALID)
    for path, value in changes.items():
        document = _changed(document, path, value)
    assert problems(document) == expected


@pytest.mark.parametrize("what", [what for what, _, _ in CATALOGUE])
def test_no_message_speaks_python(what: str) -> None:
    """No message of the catalogue carries pydantic's Python words."""
    _, changes, _ = next(entry for entry in CATALOGUE if entry[0] == what)
    document = copy.deepcopy(VALID)
    for path, value in changes.items():
        document = _changed(document, path, value)
    for message in problems(document):
        for python_word in ("Input should", "valid tuple", "valid string", "dictionary", "instance of"):
            assert python_word not in message


@pytest.mark.parametrize(
    ("listen", "admin_listen"),
    [
        ("0.0.0.0:8080", "0.0.0.0:9090"),
        ("127.0.0.1:8080", "127.0.0.2:8080"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ],
)
def test_listeners_that_do_not_overlap_pass(listen: str, admin_listen: str) -> None:
    """Different ports, different specific addresses, or kernel-chosen ports are all accepted."""
    document = with_change("listen", listen)
    document["admin_listen"] = admin_listen
    settings = parse_settings(document, ENV)
    assert (settings.listen, settings.admin_listen) == (listen, admin_listen)


def test_network_with_host_bits_clear_is_kept_as_written() -> None:
    """10.0.0.0/8 and a bare address (a /32) are accepted as the networks written."""
    document = with_change("storefronts.0.trusted_networks", ["10.0.0.0/8", "192.0.2.7"])
    settings = parse_settings(document, ENV)
    assert [str(net) for net in settings.storefronts[0].trusted_networks] == ["10.0.0.0/8", "192.0.2.7/32"]


def test_check_config_prints_the_catalogue_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints the same message for a YAML file as parse_settings raises, and exits 2."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "customers_canvas:\n"
        "  api_url: http://127.0.0.1:1\n"
        "  client_id: a\n"
        "  client_secret: ${CC_SECRET\n"
        "secret: a-secret-of-enough-length\n"
        "storefronts:\n"
        "  - {name: main, storefront_id: 1, upstream: 'http://127.0.0.1:2',"
        " trusted_networks: [127.0.0.1/33, 300.0.0.0/8]}\n"
    )
    assert main(["check-config", "--config", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "customers_canvas.client_secret: unterminated ${ (write ${NAME} or ${NAME:-default})",
        "storefronts[0].trusted_networks[0]: not a network in CIDR notation: '127.0.0.1/33'",
        "storefronts[0].trusted_networks[1]: not a network in CIDR notation: '300.0.0.0/8'",
    ]


def _changed(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node: Any = document
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    last = parts[-1]
    node[int(last) if last.isdigit() else last] = value
    return document
