"""tools/image_replay.py, the Dockerfile replay of `make chart-check`, on small Dockerfiles.

The whole replay of the real Dockerfile (two mypyc builds, minutes) runs in tools/chart-check.sh;
these check the parts it relies on, in milliseconds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_replay", ROOT / "tools" / "image_replay.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["image_replay"] = module
    spec.loader.exec_module(module)
    return module


replay = _tool()


def _replay(tmp_path: Path, dockerfile: str, ignore: str = "") -> object:
    context = tmp_path / "context"
    context.mkdir(exist_ok=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return replay.Replay(
        replay.parse(dockerfile), context, replay.DockerIgnore(ignore), Path(sys.executable), scratch
    )


def _python_tag() -> str:
    return f"python:{sys.version_info.major}.{sys.version_info.minor}.0-slim"


def test_dockerignore_keeps_the_source_and_drops_compiled_modules() -> None:
    """The repository's .dockerignore sends proxy/*.py and the locks, never a local build's .so or caches."""
    ignore = replay.DockerIgnore((ROOT / ".dockerignore").read_text())
    assert not ignore.excluded("proxy/handler.py")
    assert not ignore.excluded("requirements/runtime.txt")
    assert ignore.excluded("proxy/handler.cpython-311-x86_64-linux-gnu.so")
    assert ignore.excluded("proxy/__pycache__/handler.cpython-311.pyc")
    assert ignore.excluded("tests/conftest.py")
    assert ignore.excluded(".venv/bin/python")


def test_absolute_paths_of_a_run_line_are_staged_but_urls_and_dev_are_not(tmp_path: Path) -> None:
    """/opt/x and --dir=/wheels go under the scratch root; /dev/null and http://host/path stay."""
    run = _replay(tmp_path, f"FROM {_python_tag()}\n")
    line = run.staged_line("pip wheel --wheel-dir=/wheels . >/dev/null && curl http://h:9/x /opt/a/b")
    root = str(run.root)
    assert line == f"pip wheel --wheel-dir={root}/wheels . >/dev/null && curl http://h:9/x {root}/opt/a/b"


def test_a_failing_run_line_fails_the_replay_naming_its_line(tmp_path: Path) -> None:
    """A RUN that exits non-zero stops the replay with the Dockerfile line it is on."""
    dockerfile = f"FROM {_python_tag()} AS build\nWORKDIR /src\nRUN python -c 'import sys; sys.exit(3)'\n"
    run = _replay(tmp_path, dockerfile)
    with pytest.raises(replay.ReplayError, match=r"Dockerfile line 3: RUN failed \(exit 3\)"):
        run.run(builds=1)


def test_the_final_stage_sees_only_what_copy_from_takes(tmp_path: Path) -> None:
    """A file the build stage made but COPY --from did not take is absent in the final stage."""
    dockerfile = (
        f"FROM {_python_tag()} AS build\n"
        "RUN mkdir -p /opt/app /opt/other && echo app > /opt/app/f && echo other > /opt/other/f\n"
        f"FROM {_python_tag()}\n"
        "COPY --from=build /opt/app /opt/app\n"
        "RUN test -f /opt/app/f && test ! -e /opt/other/f\n"
        "RUN test -e /opt/other/f\n"
    )
    run = _replay(tmp_path, dockerfile)
    with pytest.raises(replay.ReplayError, match=r"Dockerfile line 6: RUN failed"):
        run.run(builds=1)


def test_copy_of_a_file_the_dockerignore_excludes_is_refused(tmp_path: Path) -> None:
    """COPY of a path .dockerignore excludes fails, as docker build does."""
    (tmp_path / "context").mkdir()
    (tmp_path / "context" / "secret.env").write_text("x")
    run = _replay(tmp_path, f"FROM {_python_tag()}\nCOPY secret.env /etc/\n", ignore="*.env\n")
    with pytest.raises(replay.ReplayError, match="excluded from the build context"):
        run.run(builds=1)
