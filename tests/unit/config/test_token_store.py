"""The token_store keys: memory by default, Redis settings checked at start-up, each problem named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.cli import main
from proxy.config import parse_settings
from proxy.errors import ConfigError
from tests.unit.config.test_load import ENV, VALID


def with_store(store: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    document["token_store"] = store
    return document


def problems(store: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(with_store(store), ENV)
    return caught.value.problems


def test_backend_defaults_to_memory() -> None:
    """Without token_store the backend is memory and no Redis is configured."""
    settings = parse_settings(copy.deepcopy(VALID), ENV)
    assert settings.token_store.backend == "memory"
    assert settings.token_store.redis is None


def test_redis_url_gets_documented_defaults() -> None:
    """A redis backend with only its url: 0.25 s per call, keys prefixed cc-sidecar:, no TLS CA."""
    settings = parse_settings(
        with_store({"backend": "redis", "redis": {"url": "rediss://:pw@redis:6380/2"}}), ENV
    )
    redis = settings.token_store.redis
    assert redis is not None
    assert (redis.timeout_s, redis.key_prefix, redis.ca_file, redis.cluster) == (
        0.25,
        "cc-sidecar:",
        None,
        False,
    )


@pytest.mark.parametrize(
    "url", ["http://redis:6379", "redis://", "valkey://redis:6379", "redis://redis:6379/db"]
)
def test_url_that_is_not_redis_names_the_key(url: str) -> None:
    """Anything but a redis:// or rediss:// URL with a host (and a numeric database) is refused."""
    [problem] = problems({"backend": "redis", "redis": {"url": url}})
    assert problem.startswith("token_store.redis.url: ")


def test_redis_backend_needs_redis_settings() -> None:
    """backend redis without a redis mapping names token_store.redis."""
    assert problems({"backend": "redis"}) == [
        "token_store.redis: required when token_store.backend is redis (at least its url)"
    ]


def test_sentinel_and_cluster_exclude_each_other() -> None:
    """A Cluster has no Sentinel: setting both is refused."""
    store = {
        "backend": "redis",
        "redis": {
            "url": "redis://mymaster/0",
            "cluster": True,
            "sentinel": {"master_name": "mymaster", "addresses": ["sentinel:26379"]},
        },
    }
    assert problems(store) == [
        "token_store.redis.cluster: a Cluster has no Sentinel; set one of sentinel or cluster"
    ]


def test_sentinel_address_must_be_host_port() -> None:
    """A sentinel address is host:port, named by its index."""
    store = {
        "backend": "redis",
        "redis": {
            "url": "redis://mymaster/0",
            "sentinel": {"master_name": "m", "addresses": ["sentinel-0:26379", "sentinel-1"]},
        },
    }
    assert problems(store) == ["token_store.redis.sentinel.addresses[1]: not a host:port address"]


def test_cluster_has_only_database_0() -> None:
    """cluster: true with /1 in the url is refused."""
    assert problems({"backend": "redis", "redis": {"url": "redis://node:7000/1", "cluster": True}}) == [
        "token_store.redis.url: a Cluster has only database 0"
    ]


def test_ca_file_needs_tls_and_a_readable_file(tmp_path: Path) -> None:
    """ca_file with redis:// and a missing file are both reported."""
    missing = str(tmp_path / "missing.pem")
    assert problems({"backend": "redis", "redis": {"url": "redis://redis:6379/0", "ca_file": missing}}) == [
        "token_store.redis.ca_file: needs a rediss:// url (TLS)",
        f"token_store.redis.ca_file: cannot read {missing}",
    ]


def test_check_config_exits_2_naming_the_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config refuses an http URL for the store with exit status 2, naming token_store.redis.url."""
    path = tmp_path / "sidecar.yaml"
    document = with_store({"backend": "redis", "redis": {"url": "http://redis:6379"}})
    document["customers_canvas"]["client_secret"] = "s3cret"
    path.write_text(yaml.safe_dump(document))
    assert main(["check-config", "--config", str(path)]) == 2
    assert "token_store.redis.url: must be a redis:// or rediss:// URL" in capsys.readouterr().err


def test_check_config_names_the_redis_store_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config's summary names the Redis store by host and port, never with the url's password."""
    path = tmp_path / "sidecar.yaml"
    document = with_store({"backend": "redis", "redis": {"url": "redis://:hunter2-password@redis:6380/1"}})
    document["customers_canvas"]["client_secret"] = "s3cret"
    path.write_text(yaml.safe_dump(document))
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "token store: redis, redis://redis:6380; keys cc-sidecar:*; 0.25 s per call" in out.splitlines()
    assert "hunter2" not in out


@pytest.mark.parametrize("timeout_s", [1.5, 5])
def test_a_redis_call_may_not_outlast_a_moment_or_the_token_work(timeout_s: float) -> None:
    """A page may wait for one Redis call: at most 1 s, and less than customers_canvas.timeout_s."""
    found = problems({"backend": "redis", "redis": {"url": "redis://redis:6379/0", "timeout_s": timeout_s}})
    api_timeout = VALID["customers_canvas"].get("timeout_s", 5)
    assert found == [
        f"token_store.redis.timeout_s: must be at most 1 s and less than customers_canvas.timeout_s ({api_timeout:g} s)"
    ]


def test_a_redis_section_is_checked_while_the_backend_is_memory() -> None:
    """Sentinel and cluster together are refused even with backend memory: switching later must just work."""
    found = problems(
        {
            "backend": "memory",
            "redis": {
                "url": "redis://redis:6379/0",
                "cluster": True,
                "sentinel": {"master_name": "m", "addresses": ["s1:26379"]},
            },
        }
    )
    assert found == ["token_store.redis.cluster: a Cluster has no Sentinel; set one of sentinel or cluster"]
