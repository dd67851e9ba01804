"""Reading the configuration: YAML, then ``${VAR}`` expansion, then types, then cross-key checks."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from proxy.config.messages import describe, key_path
from proxy.config.model import Settings
from proxy.config.validate import cross_check
from proxy.errors import ConfigError

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, expand and validate the configuration file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from exc
    return parse_settings(raw, os.environ if environ is None else environ)


def parse_settings(raw: object, environ: Mapping[str, str]) -> Settings:
    """Turn an already-parsed YAML document into settings, or raise every problem at once."""
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): must be a mapping of keys"])
    problems: list[str] = []
    expanded = _expand(raw, environ, (), problems)
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        # A key whose ${...} failed already has its problem; what its stand-in value would
        # add ("must not be empty") is noise.
        reported = {problem.partition(": ")[0] for problem in problems}
        described = (describe(error) for error in exc.errors())
        problems += [problem for problem in described if problem.partition(": ")[0] not in reported]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    problems = cross_check(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _expand(node: Any, environ: Mapping[str, str], loc: tuple[str | int, ...], problems: list[str]) -> Any:
    if isinstance(node, str):
        return _expand_string(node, environ, loc, problems)
    if isinstance(node, dict):
        return {k: _expand(v, environ, (*loc, str(k)), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, environ, (*loc, i), problems) for i, v in enumerate(node)]
    return node


def _expand_string(
    value: str, environ: Mapping[str, str], loc: tuple[str | int, ...], problems: list[str]
) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(f"{key_path(loc)}: environment variable {name} is not set")
        return ""

    # What is left once every well-formed reference is taken out: a "${" there would otherwise
    # end up in the value literally (a secret of "${CC_CLIENT_SECRET", say).
    if "${" in _ENV_REFERENCE.sub("", value):
        problems.append(f"{key_path(loc)}: unterminated ${{ (write ${{NAME}} or ${{NAME:-default}})")
    return _ENV_REFERENCE.sub(replace, value)
