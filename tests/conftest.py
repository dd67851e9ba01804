"""Shared fixtures: each area's fakes live in tests/fixtures/ and are registered here.

Hypothesis: with ``CI`` set (CI runs with ``CI=true``) every run draws the same examples, so a
red build is a change's doing, never a random draw's; locally it keeps exploring new ones (and
replays any failure it found, from ``.hypothesis/``). Loaded here, before any test module builds
its ``settings(...)``, which inherit from the profile in force.

The tests import the compiled request path when ``make compile`` built it (unless
CC_SIDECAR_PURE_PYTHON=1). A compiled module older than its source would test code that is no
longer there: the run stops at once and says what to do.
"""

import os
from pathlib import Path

import pytest
from hypothesis import settings

from proxy.compiled import PURE_PYTHON_ENV


def _stale_compiled_modules() -> list[str]:
    """Compiled modules whose source changed after the build (mypyc puts all their code in one
    shared library beside the package; each module's own extension only loads it)."""
    repo = Path(__file__).resolve().parent.parent
    built = [library.stat().st_mtime for library in repo.glob("cc_sidecar__mypyc.*.so")]
    stale = []
    for extension in (repo / "proxy").glob("*.so"):
        source = extension.with_name(extension.name.split(".", 1)[0] + ".py")
        if not built or (source.exists() and source.stat().st_mtime > min(built)):
            stale.append(source.name)
    return sorted(stale)


if os.environ.get(PURE_PYTHON_ENV) != "1" and (_stale := _stale_compiled_modules()):
    pytest.exit(
        f"compiled modules older than their source ({', '.join(_stale)}): run `make compile` "
        f"(or `make clean-compiled`, or set {PURE_PYTHON_ENV}=1, to test the source)",
        returncode=2,
    )

pytest_plugins = [
    "tests.fixtures.browser",
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
