"""The shipped docs say what the code does: the configuration reference is the generated one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from proxy.cli import main
from proxy.config import parse_settings
from proxy.config.reference import markdown_reference
from proxy.emulator import EmulatorOptions, start_up_notes

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current() -> None:
    """docs/configuration.md is exactly `cc-sidecar config-reference` (run `make docs` to refresh)."""
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == markdown_reference()


def test_readme_opens_with_the_two_commands() -> None:
    """A newcomer's two commands come first in the README."""
    head = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## ", 1)[0]
    assert "make demo" in head
    assert "make test" in head


def test_the_emulator_example_of_the_reference_is_a_valid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The YAML of "Try it against the emulator" passes check-config with the summary lines shown."""
    section = markdown_reference().split("## Try it against the emulator", 1)[1]
    [document] = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    settings = parse_settings(yaml.safe_load(document), {})
    assert settings.customers_canvas.api_url == "http://127.0.0.1:8081"
    [summary] = re.findall(r"^storefront main .*\naccess log: .*$", section, re.MULTILINE)
    path = tmp_path / "local.yaml"
    path.write_text(document)
    assert main(["check-config", "--config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == summary


def test_the_reference_shows_what_the_emulator_prints() -> None:
    """The emulator's start-up lines quoted in the reference are the ones it prints by default."""
    printed = "emulator listening on http://127.0.0.1:8081\n" + start_up_notes(
        EmulatorOptions(), "127.0.0.1", 8081
    )
    assert f"$ cc-sidecar emulator\n{printed}\n```" in markdown_reference()
