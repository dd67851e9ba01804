"""token_store.redis.password: a Redis password with any character, outside the url."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.exceptions
import yaml

from proxy.cli import main
from proxy.config.model import RedisSettings
from proxy.store.redis import create_client
from tests.fixtures.redis import RedisProcess

# What a password generator hands out: each of these breaks a url it is pasted into.
PASSWORD = "p/a@ss#w:rd%?"


def _config(tmp_path: Path, redis: dict[str, object]) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "customers_canvas": {
                    "api_url": "https://api.example.com",
                    "client_id": "app",
                    "client_secret": "client-secret",
                },
                "secret": "0123456789abcdef",
                "token_store": {"backend": "redis", "redis": redis},
                "storefronts": [{"name": "main", "storefront_id": 1, "upstream": "http://127.0.0.1:8000"}],
            }
        )
    )
    return path


async def test_password_field_authenticates_with_any_character(redis_server: RedisProcess) -> None:
    """A password with / @ # : % ? in token_store.redis.password authenticates to Redis as given."""
    redis_server.client().config_set("requirepass", PASSWORD)
    with_password = create_client(
        RedisSettings.model_validate({"url": redis_server.url, "password": PASSWORD, "timeout_s": 1.0})
    )
    without = create_client(RedisSettings.model_validate({"url": redis_server.url, "timeout_s": 1.0}))
    try:
        assert await with_password.ping() is True
        with pytest.raises(redis.exceptions.AuthenticationError):
            await without.ping()
    finally:
        await with_password.aclose()
        await without.aclose()


def test_check_config_accepts_such_a_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config passes with password: ${REDIS_PASSWORD} holding / and @ (in the url it fails)."""
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    separate = _config(tmp_path, {"url": "redis://redis:6379/0", "password": "${REDIS_PASSWORD}"})
    assert main(["check-config", "--config", str(separate)]) == 0
    inline = _config(tmp_path, {"url": "redis://:${REDIS_PASSWORD}@redis:6379/0"})
    assert main(["check-config", "--config", str(inline)]) == 2
    assert "token_store.redis.url" in capsys.readouterr().err


def test_password_in_url_and_field_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A password both in the url and in token_store.redis.password is refused, naming the key."""
    config = _config(tmp_path, {"url": "redis://:one@redis:6379/0", "password": "two"})
    assert main(["check-config", "--config", str(config)]) == 2
    assert "token_store.redis.password: the url has a password too" in capsys.readouterr().err
