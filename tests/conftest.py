"""Shared fixtures: each area's fakes live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.raw_shop",
    "tests.fixtures.shop",
]
