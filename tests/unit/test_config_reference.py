"""The generated configuration reference (proxy.config.reference)."""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from proxy.cli import main
from proxy.config import Settings
from proxy.config.reference import markdown_reference


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _model_in(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        found = [_model_in(arg) for arg in get_args(annotation)]
        return next(((m, lst) for m, lst in found if m is not None), (None, False))
    if origin is tuple:
        return _model_in(get_args(annotation)[0])[0], True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        nested, is_list = _model_in(field.annotation)
        if nested is None:
            keys.append(prefix + name)
        else:
            keys.extend(_leaf_keys(nested, f"{prefix}{name}{'[]' if is_list else ''}."))
    return keys


def _rows() -> dict[str, list[str]]:
    rows = {}
    # The key table; the hand-written sections after it (from "## ") have tables of their own.
    for line in markdown_reference().split("\n## ", 1)[0].splitlines():
        match = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    return rows


def test_every_leaf_key_of_settings_has_a_row() -> None:
    """Each leaf key of Settings, nested models and lists of models included, is in the table."""
    leaves = _leaf_keys(Settings)
    assert "storefronts[].user.session_check.ttl_s" in leaves
    assert set(leaves) <= set(_rows())


def test_nested_models_have_a_row_of_their_own() -> None:
    """A key holding a mapping is listed too, before its keys."""
    keys = list(_rows())
    assert keys.index("storefronts[].user") < keys.index("storefronts[].user.header")
    assert _rows()["storefronts"][0] == "list of mappings"


def test_known_defaults_show() -> None:
    """Defaults are written as in YAML: integers without .0, tuples as lists, None as null."""
    rows = _rows()
    assert rows["storefronts[].user.session_check.ttl_s"][1] == "`60`"
    assert rows["customers_canvas.breaker.failures"][1] == "`5`"
    assert rows["listen"][1] == "`0.0.0.0:8080`"
    assert rows["storefronts[].inject"][1] == "`[html]`"
    assert rows["customers_canvas.tenant_id"][1] == "`null`"
    assert rows["customers_canvas.api_url"][1] == "*required*"


def test_types_and_descriptions_are_in_words() -> None:
    """Validated strings get their meaning as a type; every key has a description."""
    rows = _rows()
    assert rows["storefronts[].upstream"][0] == "http(s) URL"
    assert rows["admin_listen"][0] == "host:port"
    assert rows["log_level"][0].startswith("one of `DEBUG`")
    assert all(cells[2] for cells in rows.values())


def test_cli_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    """`cc-sidecar config-reference` prints the same Markdown."""
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == markdown_reference()
