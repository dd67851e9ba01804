"""Loading and validating the configuration: every problem reported with its key path."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import main
from proxy.config import load_settings, parse_settings
from proxy.errors import ConfigError

VALID: dict[str, Any] = {
    "customers_canvas": {
        "api_url": "https://api.customerscanvashub.com",
        "client_id": "app",
        "client_secret": "${CC_CLIENT_SECRET}",
    },
    "secret": "${CC_SIDECAR_SECRET:-a-default-secret-of-enough-length}",
    "storefronts": [
        {
            "name": "main",
            "storefront_id": 12,
            "upstream": "http://127.0.0.1:8000",
            "editor_paths": ["/editor/*"],
        }
    ],
}
ENV = {"CC_CLIENT_SECRET": "s3cret"}


def problems(document: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, ENV if env is None else env)
    return caught.value.problems


def with_change(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    node: Any = document
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    node[int(last) if last.isdigit() else last] = value
    return document


def test_valid_document_gets_defaults_and_expanded_secrets() -> None:
    """Unset keys take their defaults and ${VAR} / ${VAR:-default} are expanded."""
    settings = parse_settings(copy.deepcopy(VALID), ENV)
    assert settings.customers_canvas.client_secret.get_secret_value() == "s3cret"
    assert settings.secret.get_secret_value() == "a-default-secret-of-enough-length"
    assert settings.listen == "0.0.0.0:8080"
    assert settings.token_cache_size == 100_000
    assert settings.customers_canvas.effective_token_url == "https://api.customerscanvashub.com/connect/token"
    assert settings.storefronts[0].inject == ("html",)


def test_missing_environment_variable_names_the_key() -> None:
    """An unset ${VAR} without a default is an error at the key that uses it."""
    assert problems(copy.deepcopy(VALID), env={}) == [
        "customers_canvas.client_secret: environment variable CC_CLIENT_SECRET is not set"
    ]


def test_bad_upstream_url_names_the_key() -> None:
    """A non-http(s) upstream is reported as storefronts[0].upstream."""
    assert problems(with_change("storefronts.0.upstream", "ftp://shop")) == [
        "storefronts[0].upstream: not an http(s) URL"
    ]


def test_unknown_key_is_an_error() -> None:
    """A key the model doesn't know is rejected, with its path and the nearest known key."""
    document = with_change("storefronts.0.edtor_paths", ["/x"])
    assert problems(document) == ["storefronts[0].edtor_paths: unknown key; did you mean editor_paths?"]


def test_duplicate_storefront_name_is_an_error() -> None:
    """Two storefronts with one name are rejected."""
    document = copy.deepcopy(VALID)
    second = dict(document["storefronts"][0], hosts=["b.example"])
    document["storefronts"][0]["hosts"] = ["a.example"]
    document["storefronts"].append(second)
    assert problems(document) == [
        "storefronts[1].name: duplicate storefront name 'main' (also storefronts[0])"
    ]


def test_bad_cidr_names_the_key() -> None:
    """A trusted network that isn't CIDR names its item, storefronts[0].trusted_networks[0]."""
    assert problems(with_change("storefronts.0.trusted_networks", ["10.0.0.0/33"])) == [
        "storefronts[0].trusted_networks[0]: not a network in CIDR notation: '10.0.0.0/33'"
    ]


@pytest.mark.parametrize("address", ["8080", "localhost:http", "1.2.3.4:70000", ":"])
def test_bad_listen_address_names_the_key(address: str) -> None:
    """A listen value that isn't host:port is rejected at listen."""
    [problem] = problems(with_change("listen", address))
    assert problem.startswith("listen: ")


def test_every_problem_is_reported_at_once() -> None:
    """Several problems in one file come out together, one per line."""
    document = with_change("storefronts.0.upstream", "nope")
    document["admin_listen"] = "x"
    document["token_cache_size"] = 0
    found = problems(document)
    assert len(found) == 3
    assert {p.split(":")[0] for p in found} == {
        "storefronts[0].upstream",
        "admin_listen",
        "token_cache_size",
    }


def test_several_storefronts_need_hosts_or_select_header() -> None:
    """With two storefronts, one without hosts or select_header can never be reached."""
    document = copy.deepcopy(VALID)
    document["storefronts"].append(dict(document["storefronts"][0], name="second", hosts=["b.example"]))
    assert problems(document) == [
        "storefronts[0].hosts: with several storefronts each needs hosts or select_header"
    ]


def test_identity_header_needs_trusted_networks() -> None:
    """A user.header without trusted_networks would be believed from nobody: flagged."""
    assert problems(with_change("storefronts.0.user", {"header": "X-Shop-User"})) == [
        "storefronts[0].user.header: needs trusted_networks (the header is believed from nobody else)"
    ]


def test_select_header_needs_trusted_networks() -> None:
    """A select_header without trusted_networks would be believed from nobody: flagged."""
    assert problems(
        with_change("storefronts.0.select_header", {"name": "X-CC-Storefront", "value": "a"})
    ) == ["storefronts[0].select_header: needs trusted_networks (the header is believed from nobody else)"]


def test_short_secret_is_rejected() -> None:
    """The signing secret must be at least 16 characters."""
    assert problems(with_change("secret", "short")) == ["secret: must be at least 16 characters"]


def test_unreadable_file_and_bad_yaml(tmp_path: Path) -> None:
    """A missing file and broken YAML are config errors naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("storefronts: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_settings(broken)


def test_check_config_exits_2_and_prints_each_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints every problem to stderr and exits 2."""
    path = tmp_path / "bad.yaml"
    path.write_text("listen: nope\nsecret: short\n")
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "listen: not a host:port address" in err
    assert "secret: must be at least 16 characters" in err
    assert "customers_canvas: required key is missing" in err


def test_check_config_summarises_each_storefront(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped example passes with a one-line summary per storefront."""
    for example in sorted(Path("config").glob("*.yaml")):
        assert main(["check-config", "--config", str(example)]) == 0, example
    out = capsys.readouterr().out
    assert "storefront main (id 12)" in out


@pytest.mark.parametrize(
    ("change", "summary"),
    [
        ({}, "access log: stderr, JSON lines, batched (64 KB or 1 s)"),
        (
            {"access_log_path": "/var/log/cc/access.log"},
            "access log: /var/log/cc/access.log, JSON lines, batched (64 KB or 1 s)",
        ),
        ({"access_log": False, "access_log_path": "/var/log/cc/access.log"}, "access log: off"),
        ({"log_level": "WARNING"}, "access log: off (log_level WARNING leaves out its INFO lines)"),
    ],
    ids=["default", "file", "off", "warning level"],
)
def test_check_config_reports_the_access_log(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    summary: str,
) -> None:
    """check-config's last line says where the access log goes, or that it is off and why."""
    monkeypatch.setenv("CC_CLIENT_SECRET", "s3cret")
    path = tmp_path / "sidecar.yaml"
    path.write_text(json.dumps({**VALID, **change}))
    assert main(["check-config", "--config", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == summary


def test_run_with_bad_config_exits_2_without_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run refuses a bad config with the same messages, as JSON log lines, before listening."""
    path = tmp_path / "bad.yaml"
    path.write_text("secret: short\n")
    try:
        assert main(["run", "--config", str(path)]) == 2
    finally:
        logging.getLogger().handlers.clear()
        logging.captureWarnings(False)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    messages = {entry["message"] for entry in lines}
    assert "secret: must be at least 16 characters" in messages
    assert {entry["level"] for entry in lines} == {"error"}


def test_config_schema_describes_every_top_level_key(capsys: pytest.CaptureFixture[str]) -> None:
    """config-schema prints a JSON Schema whose properties are the file's top-level keys."""
    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == {
        "listen",
        "admin_listen",
        "customers_canvas",
        "secret",
        "token_cache_size",
        "token_skew_s",
        "min_token_ttl_s",
        "shutdown_grace_s",
        "access_log",
        "access_log_path",
        "log_level",
        "storefronts",
        "token_store",
        "budget",
        "limits",
        "buffering",
    }
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"customers_canvas", "secret", "storefronts"}


def test_min_token_ttl_and_hub_url_defaults() -> None:
    """min_token_ttl_s defaults to 1800; hub_url to api_url without its "api." host label."""
    settings = parse_settings(copy.deepcopy(VALID), ENV)
    assert settings.min_token_ttl_s == 1800
    assert settings.customers_canvas.hub_url is None
    assert settings.customers_canvas.effective_hub_url == "https://customerscanvashub.com"


def test_min_token_ttl_must_not_be_negative() -> None:
    """A negative min_token_ttl_s is refused, naming the key."""
    found = problems(with_change("min_token_ttl_s", -1))
    assert found == ["min_token_ttl_s: must be at least 0"]


def test_hub_url_must_be_an_http_url() -> None:
    """customers_canvas.hub_url is checked like api_url."""
    found = problems(with_change("customers_canvas.hub_url", "ftp://hub.example.com"))
    assert found == ["customers_canvas.hub_url: not an http(s) URL"]


def test_check_config_says_where_the_tenant_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With HTML injection on and no tenant_id, check-config's summary says the tenant is learnt."""
    path = tmp_path / "sidecar.yaml"
    document = copy.deepcopy(VALID)
    document["customers_canvas"]["client_secret"] = "s3cret"
    path.write_text(json.dumps(document))
    assert main(["check-config", "--config", str(path)]) == 0
    unset = capsys.readouterr().out.splitlines()
    document["customers_canvas"]["tenant_id"] = 7
    path.write_text(json.dumps(document))
    assert main(["check-config", "--config", str(path)]) == 0
    configured = capsys.readouterr().out.splitlines()
    tenant_line = (
        "tenant: customers_canvas.tenant_id is not set; editor pages carry the tenant the API"
        " reports for each storefront (learnt at start-up; tenantId is null until then)"
    )
    assert tenant_line in unset
    assert [line for line in configured if line.startswith("tenant:")] == []


def test_run_with_a_temp_dir_it_cannot_write_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffering.temp_dir that cannot take a temp file fails the start, not the first large upload."""
    document = copy.deepcopy(VALID)
    document["buffering"] = {"temp_dir": str(tmp_path / "missing")}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    monkeypatch.setenv("CC_CLIENT_SECRET", "s3cret")
    try:
        assert main(["run", "--config", str(path)]) == 2
    finally:
        logging.getLogger().handlers.clear()
        logging.captureWarnings(False)
    messages = [json.loads(line)["message"] for line in capsys.readouterr().err.splitlines()]
    assert messages == [
        f"buffering.temp_dir: cannot make a temp file in {tmp_path / 'missing'}: No such file or directory"
    ]
