"""Shared fixtures: each area's fakes live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.shop",
    "tests.fixtures.redis",
]
