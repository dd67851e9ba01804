"""Configuration: typed settings (``model``), reading and ``${VAR}`` expansion (``load``), and
cross-key checks (``validate``). ``load_settings`` is the one entry point; it raises
:class:`proxy.errors.ConfigError` listing every problem, each prefixed by its key path."""

from proxy.config.load import load_settings, parse_settings
from proxy.config.model import (
    BreakerSettings,
    CustomersCanvasSettings,
    InjectMode,
    SelectHeader,
    SessionCheck,
    Settings,
    StorefrontSettings,
    UserSettings,
)

__all__ = [
    "BreakerSettings",
    "CustomersCanvasSettings",
    "InjectMode",
    "SelectHeader",
    "SessionCheck",
    "Settings",
    "StorefrontSettings",
    "UserSettings",
    "load_settings",
    "parse_settings",
]
