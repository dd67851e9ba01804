"""pydantic's validation errors in the words of someone writing YAML.

pydantic speaks Python ("Input should be a valid tuple"); the operator wrote YAML, so each error
becomes "must be a list", "must be host:port", "must be a path starting with /", with the key path
in front (``storefronts[0].trusted_networks[1]: ...``) and, for an unknown key, the nearest known
key. What a string key must look like is read from the model itself (the validators the reference
names), so a new key of an existing kind needs no new message.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from proxy.config.model import Settings
from proxy.config.reference import field_type, nested_model

# What a string of each validated kind must look like, by the reference's name for the kind.
_STRING_KINDS = {
    "host:port": "host:port (e.g. 0.0.0.0:8080)",
    "http(s) URL": "an http(s) URL",
    "header name": "an HTTP header name",
    "cookie name": "a cookie name",
    "path glob": "a path starting with /",
}
# pydantic error types whose meaning does not depend on the key.
_BY_ERROR_TYPE = {
    "missing": "required key is missing",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a mapping (key: value lines)",
    "model_type": "must be a mapping (key: value lines)",
    "model_attributes_type": "must be a mapping (key: value lines)",
    "string_too_short": "must not be empty",
}
# The one pattern the model uses, in words.
_PATTERNS = {r"^[A-Za-z0-9_.-]+$": "may contain only letters, digits, '_', '.' and '-'"}
# Keys whose values are never repeated in a message.
_SECRET_KEYS = frozenset({"secret", "client_secret"})


def describe(error: Any, root: type[BaseModel] = Settings) -> str:
    """One pydantic error as ``key.path: what is wrong``."""
    loc = _key_loc(error["loc"])
    return f"{key_path(loc)}: {_message(error, loc, root)}"


def key_path(loc: tuple[str | int, ...]) -> str:
    """Render a location such as ``("storefronts", 1, "upstream")`` as ``storefronts[1].upstream``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _key_loc(raw: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The location without pydantic's own steps: validator names and union members' type names."""
    return tuple(
        part
        for part in raw
        if not (isinstance(part, str) and (part.startswith("function-") or part[:1].isupper()))
    )


def _message(error: Any, loc: tuple[str | int, ...], root: type[BaseModel]) -> str:
    kind: str = error["type"]
    context: dict[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(loc, root)
    if kind in ("tuple_type", "list_type"):
        secret = bool(loc) and loc[-1] in _SECRET_KEYS
        if isinstance(value, str | int | float) and not secret:
            return f"must be a list, e.g. [{value}]"
        return "must be a list"
    if kind == "string_type":
        expected = _STRING_KINDS.get(_kind_at(loc, root), "a string")
        if expected.startswith("host:port") and isinstance(value, int):
            return f"must be host:port (e.g. 0.0.0.0:{value})"
        return f"must be {expected}"
    if kind == "literal_error":
        choices = context.get("expected", "").replace("'", "").replace(" or ", ", ")
        return f"must be one of {choices}, not {value!r}"
    if kind == "greater_than":
        return f"must be greater than {_number(context['gt'])}"
    if kind == "greater_than_equal":
        return f"must be at least {_number(context['ge'])}"
    if kind == "string_pattern_mismatch":
        pattern = context.get("pattern", "")
        return _PATTERNS.get(pattern, f"must match the pattern {pattern}")
    if kind in _BY_ERROR_TYPE:
        return _BY_ERROR_TYPE[kind]
    message: str = error["msg"]
    # Fallback for an error type not listed above: at least drop pydantic's Python phrasing.
    return message.removeprefix("Value error, ").replace("Input should be", "must be")


def _unknown_key(loc: tuple[str | int, ...], root: type[BaseModel]) -> str:
    model = _model_at(loc[:-1], root)
    if model is None or not isinstance(loc[-1], str):
        return "unknown key"
    nearest = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f"unknown key; did you mean {nearest[0]}?" if nearest else "unknown key"


def _model_at(loc: tuple[str | int, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model whose keys sit at ``loc`` (list indices pass through to the item model)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = _field(model, part)
        if field is None:
            return None
        model, _ = nested_model(field.annotation)
    return model


def _field(model: type[BaseModel] | None, name: str) -> FieldInfo | None:
    return None if model is None else model.model_fields.get(name)


def _kind_at(loc: tuple[str | int, ...], root: type[BaseModel]) -> str:
    """The reference's name for what the value at ``loc`` is (``host:port``, ``path glob``, ...)."""
    names = [part for part in loc if isinstance(part, str)]
    if not names:
        return ""
    field = _field(_model_at(tuple(loc[: _last_name_index(loc)]), root), names[-1])
    if field is None:
        return ""
    # "header name or null" is an optional header name; "list of path glob" (at an index) a glob.
    kind = field_type(field).split(" or ")[0]
    return kind.removeprefix("list of ") if isinstance(loc[-1], int) else kind


def _last_name_index(loc: tuple[str | int, ...]) -> int:
    return max(i for i, part in enumerate(loc) if isinstance(part, str))


def _number(value: object) -> str:
    """A bound as it would be written in YAML: 0, not 0.0."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
