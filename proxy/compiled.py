"""Whether the request path runs compiled, and the switch back to its Python source.

A build with CC_SIDECAR_COMPILE=1 (the container image, `make compile`) puts a mypyc-compiled C
extension beside each module setup.py lists; Python imports an extension before a ``.py`` of the
same name. Their code is in one shared library, ``cc_sidecar__mypyc``, which mypyc puts beside
the package: in site-packages for a wheel, at a checkout's root for `make compile`.
CC_SIDECAR_PURE_PYTHON=1 imports every ``proxy`` module from its source instead (to rule the
compiled build out while chasing a problem, and for `make unit-pure`), the way
CC_SIDECAR_EVENT_LOOP=asyncio rules out uvloop. Decided once, when ``proxy`` is first imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TypeVar

_Class = TypeVar("_Class", bound=type)

PURE_PYTHON_ENV = "CC_SIDECAR_PURE_PYTHON"
SHARED_LIBRARY = "cc_sidecar__mypyc"


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


def python_class(cls: _Class) -> _Class:
    """Keep ``cls`` a regular Python class when its module is compiled; its methods still are.

    mypyc makes each class of a compiled module a C extension type, which cannot extend a class
    with ``__slots__`` (aiohttp's protocol has them), and treats any decorator it does not know as
    a reason to leave a class as Python makes it. This one does nothing else, so the
    source runs as before, and nothing beyond the standard library is needed at run time (mypyc's
    own ``mypyc_attr(native_class=False)`` would need ``mypy_extensions`` installed).
    """
    return cls


def choose_build(environ: Mapping[str, str] = os.environ) -> None:
    """With CC_SIDECAR_PURE_PYTHON=1, make every later ``proxy.*`` import load its source; else
    make sure compiled modules find their shared library."""
    if environ.get(PURE_PYTHON_ENV, "") == "1":
        if not any(isinstance(finder, SourceOnlyFinder) for finder in sys.meta_path):
            sys.meta_path.insert(0, SourceOnlyFinder())
        return
    _load_shared_library()


def _load_shared_library() -> None:
    """Load mypyc's shared library from beside the package when the import path lacks that place.

    An editable install (`make setup`) puts the package alone on the path, not the checkout's
    root where `make compile` leaves the library; a compiled module would fail to import.
    """
    if SHARED_LIBRARY in sys.modules or importlib.util.find_spec(SHARED_LIBRARY) is not None:
        return
    root = Path(__file__).resolve().parent.parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        location = root / f"{SHARED_LIBRARY}{suffix}"
        if not location.is_file():
            continue
        spec = importlib.util.spec_from_file_location(SHARED_LIBRARY, location)
        if spec is None or spec.loader is None:
            return
        library = importlib.util.module_from_spec(spec)
        sys.modules[SHARED_LIBRARY] = library
        spec.loader.exec_module(library)
        return


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a compiled extension."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)
