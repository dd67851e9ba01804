"""Shared fixtures: each area's fakes live in tests/fixtures/ and are registered here.

Hypothesis: with ``CI`` set (CI runs with ``CI=true``) every run draws the same examples, so a
red build is a change's doing, never a random draw's; locally it keeps exploring new ones (and
replays any failure it found, from ``.hypothesis/``). Loaded here, before any test module builds
its ``settings(...)``, which inherit from the profile in force.
"""

import os

from hypothesis import settings

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.raw_shop",
    "tests.fixtures.shop",
    "tests.fixtures.recording",
    "tests.fixtures.redis",
]

settings.register_profile(
    "ci",
    # Examples seeded from each test's own code, not the clock.
    derandomize=True,
    # Nothing carried over from another run: the examples depend on the code alone.
    database=None,
    # A shared CI machine's pauses would fail an example on time, not on behaviour.
    deadline=None,
)
if os.environ.get("CI"):
    settings.load_profile("ci")
