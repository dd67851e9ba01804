"""The shipped docs say what the code does: the configuration reference is the generated one."""

from __future__ import annotations

from pathlib import Path

from proxy.config.reference import markdown_reference

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current() -> None:
    """docs/configuration.md is exactly `cc-sidecar config-reference` (run `make docs` to refresh)."""
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == markdown_reference()


def test_readme_opens_with_the_two_commands() -> None:
    """A newcomer's two commands come first in the README."""
    head = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## ", 1)[0]
    assert "make demo" in head
    assert "make test" in head
