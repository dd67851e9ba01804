"""The chart's values.schema.json: its `config` part is the config model's schema, and it is current."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from proxy.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _values_schema_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("values_schema", ROOT / "tools" / "values_schema.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(schema: dict[str, Any], definitions: dict[str, Any], prefix: str = "") -> set[str]:
    """Every key path of an object schema, following $refs, optional values and list items."""

    def resolved(node: dict[str, Any]) -> dict[str, Any]:
        return definitions[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node

    found: set[str] = set()
    for name, node in schema.get("properties", {}).items():
        path = prefix + name
        found.add(path)
        for nested in map(resolved, [node, *node.get("anyOf", [])]):
            if "properties" in nested:
                found |= _keys(nested, definitions, path + ".")
            items = resolved(nested.get("items", {}))
            if "properties" in items:
                found |= _keys(items, definitions, path + "[].")
    return found


def test_committed_values_schema_is_the_generated_one() -> None:
    """helm/cc-sidecar/values.schema.json is exactly what `make chart-schema` writes."""
    tool = _values_schema_tool()
    assert (ROOT / "helm" / "cc-sidecar" / "values.schema.json").read_text(
        encoding="utf-8"
    ) == tool.rendered()


def test_config_part_has_every_key_of_config_schema_but_those_the_chart_sets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The chart's `config` keys are `cc-sidecar config-schema`'s, minus listen, admin_listen, the two secrets."""
    assert main(["config-schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    committed = json.loads((ROOT / "helm" / "cc-sidecar" / "values.schema.json").read_text(encoding="utf-8"))
    config = committed["properties"]["config"]
    expected = _keys(printed, printed["$defs"]) - {
        "listen",
        "admin_listen",
        "secret",
        "customers_canvas.client_secret",
    }
    assert _keys(config, {}) == expected
    assert config["additionalProperties"] is False
    assert config["properties"]["storefronts"]["items"]["additionalProperties"] is False


def test_chart_owned_keys_are_closed() -> None:
    """The chart's own mappings refuse unknown keys; Kubernetes objects passed through stay open."""
    schema = json.loads((ROOT / "helm" / "cc-sidecar" / "values.schema.json").read_text(encoding="utf-8"))
    for closed in (
        schema,
        schema["properties"]["ports"],
        schema["properties"]["shop"],
        schema["properties"]["image"],
    ):
        assert closed["additionalProperties"] is False
    for passed_through in ("resources", "affinity", "podAnnotations"):
        assert "additionalProperties" not in schema["properties"][passed_through]
