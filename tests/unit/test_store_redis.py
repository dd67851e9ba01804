"""What only the Redis store does: seal what it holds, and step aside when Redis fails."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import generate_latest

from proxy.config.model import RedisSettings
from proxy.errors import StoreUnavailable
from proxy.metrics import Metrics
from proxy.store import StoreKey
from proxy.store.redis import BREAKER_FAILURES, RETRY_AFTER_S, RedisStore, account_of, create_client
from tests.fixtures.emulator import ManualClock, settings_for
from tests.fixtures.process import free_port
from tests.fixtures.redis import RedisProcess, needs_redis

SECRET = "test-secret-0123456789abcdef"
ALICE = StoreKey("customer", "1\x001\x00alice")


def make_store(
    server: RedisProcess,
    *,
    secret: str = SECRET,
    metrics: Metrics | None = None,
    clock: ManualClock | None = None,
    timeout_s: float = 1.0,
) -> RedisStore:
    """A store on ``server``. Each call gets 1 s (the most allowed) unless a test about the timeout
    asks for less: a busy CI machine's round trip can pass the 0.25 s default."""
    config = RedisSettings.model_validate({"url": server.url, "timeout_s": timeout_s})
    return RedisStore(
        create_client(config),
        secret=secret,
        key_prefix=config.key_prefix,
        timeout_s=config.timeout_s,
        metrics=metrics or Metrics(),
        clock=clock or time.monotonic,
    )


@pytest.fixture
async def store(redis_server: RedisProcess) -> AsyncIterator[RedisStore]:
    shared = make_store(redis_server)
    yield shared
    await shared.aclose()


async def test_key_names_hide_what_they_index(store: RedisStore, redis_server: RedisProcess) -> None:
    """A key is the prefix, the kind and 32 hex digits of HMAC: the customer id is not in it."""
    await store.put(ALICE, b"value", 30)
    (name,) = [key.decode() for key in redis_server.client().keys("*")]
    prefix, kind, mac = name.split(":")
    assert (prefix, kind, len(mac)) == ("cc-sidecar", "customer", 32)
    assert "alice" not in name


async def test_values_are_encrypted(store: RedisStore, redis_server: RedisProcess) -> None:
    """Redis holds the value sealed: the plaintext bytes appear nowhere in it."""
    await store.put(ALICE, b"eyJhbGciOiJSUzI1NiJ9.secret-part", 30)
    (name,) = redis_server.client().keys("*")
    raw = redis_server.client().get(name)
    assert raw is not None
    assert b"eyJ" not in raw
    assert b"secret-part" not in raw


async def test_every_key_has_ttl(store: RedisStore, redis_server: RedisProcess) -> None:
    """Entries and claims alike expire: PTTL is positive for each key."""
    await store.put(ALICE, b"value", 30)
    await store.claim(StoreKey("lock", ALICE.name), 5)
    client = redis_server.client()
    ttls = sorted(client.pttl(name) for name in client.keys("*"))
    assert len(ttls) == 2
    assert 0 < ttls[0] <= 5000
    assert 5000 < ttls[1] <= 30000


async def test_value_of_another_secret_reads_as_miss(redis_server: RedisProcess) -> None:
    """A sidecar with another secret cannot read (nor is misled by) what the first one stored."""
    first = make_store(redis_server)
    other = make_store(redis_server, secret="another-secret-0123456789")
    try:
        await first.put(ALICE, b"value", 30)
        assert await other.get(ALICE) is None
    finally:
        await first.aclose()
        await other.aclose()


async def test_dead_redis_opens_breaker_once(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis gone: BREAKER_FAILURES calls fail trying it, the next ones at once without I/O, one
    warning in all."""
    metrics = Metrics()
    store = make_store(redis_server, metrics=metrics)
    try:
        await store.put(ALICE, b"value", 30)
        redis_server.kill()
        with caplog.at_level(logging.WARNING, "proxy.store"):
            for _ in range(BREAKER_FAILURES):
                with pytest.raises(StoreUnavailable):
                    await store.get(ALICE)
        assert not store.available
        started = time.perf_counter()
        for _ in range(100):
            with pytest.raises(StoreUnavailable):
                await store.get(ALICE)
        # No I/O (the skipped count below says so): 100 calls in far less than one timeout.
        assert time.perf_counter() - started < 0.5
        assert [r.message for r in caplog.records if r.name == "proxy.store"] == [
            "token store unavailable: serving from this replica's memory until it returns"
        ]
        exported = generate_latest(metrics.registry).decode()
        assert "cc_sidecar_store_available 0.0" in exported
        assert 'cc_sidecar_store_operations_total{operation="get",outcome="skipped"} 100.0' in exported
    finally:
        await store.aclose()


async def test_one_late_answer_fails_its_call_alone(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """One call past its timeout (Redis answers again after it): the breaker stays closed, the next
    call is Redis', no warning."""
    metrics = Metrics()
    store = make_store(redis_server, metrics=metrics, timeout_s=0.2)
    try:
        await store.put(ALICE, b"value", 30)
        redis_server.freeze()
        with caplog.at_level(logging.WARNING, "proxy.store"), pytest.raises(StoreUnavailable):
            await store.get(ALICE)
        redis_server.thaw()
        assert store.available
        assert await store.get(ALICE) == b"value"
        assert [r.message for r in caplog.records if r.name == "proxy.store"] == []
        exported = generate_latest(metrics.registry).decode()
        assert 'cc_sidecar_store_operations_total{operation="get",outcome="error"} 1.0' in exported
        assert "cc_sidecar_store_available 1.0" in exported
    finally:
        await store.aclose()


async def test_frozen_redis_fails_within_timeout(redis_server: RedisProcess) -> None:
    """A stopped Redis (socket open, no answer) costs a call its timeout."""
    store = make_store(redis_server, timeout_s=0.2)
    try:
        await store.put(ALICE, b"value", 30)
        redis_server.freeze()
        started = time.perf_counter()
        with pytest.raises(StoreUnavailable):
            await store.get(ALICE)
        assert 0.15 < time.perf_counter() - started < 0.5
        redis_server.thaw()
    finally:
        await store.aclose()


async def test_breaker_probes_and_closes_when_redis_returns(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """After RETRY_AFTER_S one call tries Redis again; it is back, so the store is used again."""
    clock = ManualClock()
    metrics = Metrics()
    store = make_store(redis_server, metrics=metrics, clock=clock)
    try:
        redis_server.kill()
        for _ in range(BREAKER_FAILURES):
            with pytest.raises(StoreUnavailable):
                await store.get(ALICE)
        redis_server.start()
        with pytest.raises(StoreUnavailable):
            await store.get(ALICE)  # still held back: no probe before RETRY_AFTER_S
        clock.advance(RETRY_AFTER_S)
        caplog.clear()
        with caplog.at_level(logging.WARNING, "proxy.store"):
            assert await store.get(ALICE) is None
        assert store.available
        assert [r.message for r in caplog.records if r.name == "proxy.store"] == [
            "token store is back: customers are shared with the other replicas again"
        ]
        assert "cc_sidecar_store_available 1.0" in generate_latest(metrics.registry).decode()
    finally:
        await store.aclose()


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 with its key: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)

    def build(
        subject: str,
        issuer: str,
        key: ec.EllipticCurvePrivateKey,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("test CA", "test CA", ca_key, ca_key, ca=True)
    server = build("127.0.0.1", "test CA", server_key, ca_key, ca=False)
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


async def test_rediss_with_ca_file_verifies_the_server(tmp_path: Path) -> None:
    """rediss:// with ca_file talks TLS to a server that CA signed; without it the server is refused."""
    needs_redis()
    ca, cert, key = _certificates(tmp_path)
    server = RedisProcess(
        free_port(),
        tmp_path / "redis",
        extra=("--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
               "--tls-auth-clients", "no"),
        tls=True,
    ).start()  # fmt: skip
    url = f"rediss://127.0.0.1:{server.port}/0"
    trusted = RedisStore.from_settings(
        RedisSettings.model_validate({"url": url, "ca_file": str(ca)}), secret=SECRET, metrics=Metrics()
    )
    untrusted = RedisStore.from_settings(
        RedisSettings.model_validate({"url": url}), secret=SECRET, metrics=Metrics()
    )
    try:
        await trusted.put(ALICE, b"over TLS", 30)
        assert await trusted.get(ALICE) == b"over TLS"
        with pytest.raises(StoreUnavailable):
            await untrusted.get(ALICE)
    finally:
        await trusted.aclose()
        await untrusted.aclose()
        server.kill()


async def test_another_account_reads_nothing_of_this_ones(redis_server: RedisProcess) -> None:
    """Same secret and key_prefix, another account (API URL, client id, tenant): other key names,
    nothing readable; the same account on another client reads the value."""
    settings = RedisSettings.model_validate({"url": redis_server.url})
    first_account = account_of(settings_for("https://api.example.com", client_id="shop-a", tenant_id=None))
    other_account = account_of(settings_for("https://api.example.com", client_id="shop-b", tenant_id=None))
    stores = [
        RedisStore.from_settings(settings, secret=SECRET, metrics=Metrics(), account=account)
        for account in (first_account, other_account, first_account)
    ]
    try:
        await stores[0].put(ALICE, b"token of shop a", 30)
        assert await stores[1].get(ALICE) is None
        assert await stores[2].get(ALICE) == b"token of shop a"
        assert len(redis_server.client().keys("*")) == 1
        await stores[1].put(ALICE, b"token of shop b", 30)
        assert len(redis_server.client().keys("*")) == 2
    finally:
        for store in stores:
            await store.aclose()
