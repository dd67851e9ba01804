"""Which build of the request path a process imports: compiled (make compile) or the source.

Each check runs in a fresh interpreter, since the choice is made once, when ``proxy`` is imported.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import proxy.compiled
from proxy.compiled import PURE_PYTHON_ENV, is_compiled

REPO = Path(__file__).resolve().parents[2]
COMPILED_BUILD = any((REPO / "proxy").glob("handler.*.so"))


def imported_files(*modules: str, pure: bool) -> list[str]:
    """Each module's file, relative to the repository, as a fresh interpreter imports it.

    It runs outside the checkout, as the `cc-sidecar` command does: the editable install
    (`make setup`) puts the package on its path, not the checkout's root.
    """
    env = {key: value for key, value in os.environ.items() if key != PURE_PYTHON_ENV}
    if pure:
        env[PURE_PYTHON_ENV] = "1"
    script = "import importlib, sys\nfor name in sys.argv[1:]: print(importlib.import_module(name).__file__)"
    finished = subprocess.run(
        [sys.executable, "-c", script, *modules],
        cwd=REPO / "tests",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [str(Path(line).relative_to(REPO)) for line in finished.stdout.splitlines()]


def test_the_pure_python_switch_imports_every_module_from_its_source() -> None:
    """CC_SIDECAR_PURE_PYTHON=1: the request path and a subpackage's module both come from .py files."""
    assert imported_files("proxy.handler", "proxy.upstream_http", "proxy.config.model", pure=True) == [
        "proxy/handler.py",
        "proxy/upstream_http.py",
        "proxy/config/model.py",
    ]


@pytest.mark.skipif(not COMPILED_BUILD, reason="no compiled build here (make compile makes one)")
def test_a_compiled_build_is_imported_without_the_switch() -> None:
    """With `make compile`'s modules beside the source, the request path is the compiled one, its
    shared library loaded from the checkout's root."""
    [handler, model] = imported_files("proxy.handler", "proxy.config.model", pure=False)
    assert (handler.split(".")[0], handler.split(".")[-1]) == ("proxy/handler", "so")
    assert model == "proxy/config/model.py"  # config is never compiled


def test_a_source_module_is_not_reported_compiled() -> None:
    """is_compiled tells a module loaded from .py apart (this one never is compiled)."""
    assert is_compiled(proxy.compiled) is False


def compiled_modules() -> list[str]:
    """The modules setup.py has mypyc compile."""
    for node in ast.parse((REPO / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            "COMPILED_MODULES"
        ]:
            modules: list[str] = ast.literal_eval(node.value)
            return modules
    raise AssertionError("setup.py lists no COMPILED_MODULES")


@pytest.mark.parametrize("module", compiled_modules())
def test_a_compiled_module_never_relies_on_raise_from_none(module: str) -> None:
    """Compiled, ``raise X from None`` keeps the context it should drop (an error that may quote a
    token): compiled modules raise such errors after the except block instead."""
    tree = ast.parse((REPO / module).read_text())
    from_none = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant) and node.cause.value is None
    ]
    assert from_none == []
