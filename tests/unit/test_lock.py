"""The development and CI environment is the lock, exactly (requirements/, written by `make lock`).

`make setup` installs requirements/dev.txt with `--require-hashes --no-deps`, then the package
itself without resolving anything. These tests fail when the venv holds anything else (a package
added or upgraded by hand, a stale venv), when pyproject.toml asks for something the lock does not
satisfy (a range changed without `make lock`), and when the image's locks (runtime.txt, build.txt)
disagree with what the tests ran on. `make test-latest` sets CC_SIDECAR_UNLOCKED=1: its throwaway
venv holds the newest versions on purpose.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")

pytestmark = pytest.mark.skipif(
    os.environ.get("CC_SIDECAR_UNLOCKED") == "1", reason="make test-latest runs unlocked on purpose"
)


def locked(name: str) -> dict[str, str]:
    """A lock file's pins that apply to this interpreter and platform: {canonical name: version}."""
    pins = {}
    for line in (LOCKS / name).read_text().splitlines():
        if match := PINNED.match(line):
            package, version, marker = match.groups()
            if marker is None or Marker(marker).evaluate():
                pins[canonicalize_name(package)] = version
    return pins


def installed() -> dict[str, str]:
    """Every distribution in this interpreter's environment but the project itself."""
    versions = {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()
    }
    versions.pop("cc-sidecar")
    return versions


def test_the_venv_holds_exactly_the_lock() -> None:
    """What `make setup` installed is dev.txt's pins for this Python, nothing more or other."""
    assert installed() == locked("dev.txt")


def test_every_lock_file_has_hashes_for_every_pin() -> None:
    """pip's --require-hashes refuses a pin without a hash; each lock carries one for every pin."""
    for name in ("dev.txt", "runtime.txt", "build.txt"):
        lines = (LOCKS / name).read_text().splitlines()
        starts = [number for number, line in enumerate(lines) if PINNED.match(line)]
        assert starts, name
        for start, end in zip(starts, [*starts[1:], len(lines)], strict=True):
            hashes = [line for line in lines[start + 1 : end] if line.strip().startswith("--hash=sha256:")]
            assert hashes, f"{name}: {lines[start]}"


def test_the_image_locks_pin_what_the_tests_ran_on() -> None:
    """runtime.txt (the image) and build.txt (its mypyc stage) are dev.txt's versions."""
    dev = locked("dev.txt")
    for name in ("runtime.txt", "build.txt"):
        differing = {
            package: version for package, version in locked(name).items() if dev.get(package) != version
        }
        assert differing == {}, name


def test_the_lock_satisfies_pyproject() -> None:
    """Every dependency pyproject.toml names (runtime and `test`) is locked at a version it allows."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dev = locked("dev.txt")
    unsatisfied = []
    for line in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = dev.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(Version(version), prereleases=True):
            unsatisfied.append(f"{line} (locked: {version})")
    assert unsatisfied == []
