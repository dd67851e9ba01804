"""Whether the request path runs compiled, and the switch back to its Python source.

A build with CC_SIDECAR_COMPILE=1 (the container image, `make compile`) puts a mypyc-compiled C
extension beside each module setup.py lists; Python imports an extension before a ``.py`` of the
same name. CC_SIDECAR_PURE_PYTHON=1 imports every ``proxy`` module from its source instead (to
rule the compiled build out while chasing a problem, and for `make unit-pure`), the way
CC_SIDECAR_EVENT_LOOP=asyncio rules out uvloop. Read once, when ``proxy`` is first imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType

PURE_PYTHON_ENV = "CC_SIDECAR_PURE_PYTHON"


class SourceOnlyFinder(importlib.abc.MetaPathFinder):
    """Finds ``proxy`` modules by their ``.py`` files alone, never by a compiled extension."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("proxy.") or path is None:
            return None
        for entry in path:
            finder = importlib.machinery.FileFinder(
                entry,
                (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
            )
            spec = finder.find_spec(fullname)
            if spec is not None:
                return spec
        return None


def prefer_source(environ: Mapping[str, str] = os.environ) -> None:
    """With CC_SIDECAR_PURE_PYTHON=1, make every later ``proxy.*`` import load its source."""
    if environ.get(PURE_PYTHON_ENV, "") != "1":
        return
    if not any(isinstance(finder, SourceOnlyFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, SourceOnlyFinder())


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a compiled extension."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)
