"""Replay the Dockerfile's build here, without a Docker engine, and start what it built.

    python tools/image_replay.py [--python PATH] [--builds N] [--keep DIR]

No Docker engine and no registry of base images are reachable where `make test` runs, so this reads
the repository's own Dockerfile and does what a builder would, instruction by instruction:

- ARG, ENV, WORKDIR, COPY (from the build context filtered by .dockerignore, or `--from` an earlier
  stage) and RUN (shell form, `/bin/sh -c`, in order), with `${VAR}`, `${VAR:-word}`,
  `${VAR:+word}` expanded as Docker expands them.
- The base image (`python:3.11.*`) is this machine's CPython of the same minor version (`--python`;
  default pyenv's 3.11, else `python3.11` on PATH), put on PATH as `python`/`python3`.
- Every absolute path the Dockerfile names (`/src`, `/opt/...`, `/wheels`, `/tmp/...`) is staged under
  one scratch root. Each stage starts from an empty root; the previous stage's root is set aside and
  only what `COPY --from` takes comes over, then it is deleted, so the final stage cannot lean on a
  file that exists only in the build stage (a venv still pointing at /opt/build would break here as it
  would in the image).
- `apt-get update` does nothing; `apt-get install PKG...` checks that each Debian package is
  installed on this machine (the replay cannot install them) and fails naming the missing one.

Then it runs the final stage's ENTRYPOINT + CMD with the final stage's environment, from its WORKDIR,
with a config file written where CMD names it, asks the admin listener's `/readyz` and prints one JSON
line: the sha256 of each wheel the build stage left in /wheels (of every build, with `--builds 2`),
the distributions installed in the final venv, and the start-up line. Exit 1 with the failing
instruction when a step fails. tests/integration/test_image.py runs it in `make test`.

Not replayed: USER (the replay runs as the caller), LABEL, EXPOSE, HEALTHCHECK, STOPSIGNAL.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYENV_311 = Path("/root/.pyenv/versions/3.11.7/bin/python3.11")
# Paths a RUN line may name that are the kernel's, not the image's: never staged.
UNSTAGED = ("/dev/", "/proc/", "/sys/")
# An absolute path in a shell line: a "/" not preceded by a name, a path or a URL scheme's ":".
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~$}-])/(?=[\w.*\[-])")
VARIABLE = re.compile(r"\$(?:\{(?P<name>\w+)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<bare>\w+))")
# Environment of the caller a build may need (the package index, proxies, certificates); nothing of
# the caller's Python or of cc-sidecar's own switches (CC_SIDECAR_PURE_PYTHON would fail the build's
# self-check for the wrong reason).
PASSED_ENV = re.compile(r"^(PIP_\w+|HTTPS?_PROXY|NO_PROXY|https?_proxy|no_proxy|SSL_CERT_\w+|HOME|TMPDIR)$")
APT_GET_SHIM = """#!/bin/sh
# apt-get of the image replay: the packages must already be installed on this machine.
case "$1" in
  update) exit 0 ;;
  install) shift ;;
  *) echo "image-replay: apt-get $1 is not replayed" >&2; exit 1 ;;
esac
for package in "$@"; do
  case "$package" in -*) continue ;; esac
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    echo "image-replay: Debian package $package is not installed here (apt-get install $package)" >&2
    exit 1
  fi
done
"""


class ReplayError(Exception):
    """A Dockerfile instruction failed or cannot be replayed."""


@dataclass
class Instruction:
    line: int
    keyword: str
    arguments: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: list[Instruction]
    stages: list[Stage]


def parse(text: str) -> Dockerfile:
    """The Dockerfile's instructions, continuation lines joined and comment lines dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].rstrip())
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(part for part in pending if part).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), arguments.strip()))
        pending = []
    if pending:
        raise ReplayError(f"Dockerfile line {start}: a continuation that never ends")
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0]))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ReplayError(f"Dockerfile line {instruction.line}: {instruction.keyword} before FROM")
            global_args.append(instruction)
        else:
            stages[-1].instructions.append(instruction)
    if not stages:
        raise ReplayError("Dockerfile: no FROM")
    return Dockerfile(global_args, stages)


def expand(text: str, variables: dict[str, str]) -> str:
    """Docker's variable expansion: $V, ${V}, ${V:-word}, ${V:+word}; unset is empty."""

    def one(match: re.Match[str]) -> str:
        name = match["name"] or match["bare"]
        value = variables.get(name, "")
        if match["op"] == "-":
            return value or match["word"]
        if match["op"] == "+":
            return match["word"] if value else ""
        return value

    return VARIABLE.sub(one, text)


def assignments(arguments: str) -> list[tuple[str, str | None]]:
    """NAME=value pairs of ARG or ENV (values may be quoted); ARG NAME alone has no default."""
    pairs: list[tuple[str, str | None]] = []
    for word in shlex.split(arguments, posix=True):
        name, sep, value = word.partition("=")
        pairs.append((name, value if sep else None))
    return pairs


class DockerIgnore:
    """The build context's filter: .dockerignore patterns, `!` exceptions, the last match wins, and a
    pattern that matches a directory matches everything under it (as Docker does)."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, list[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = line[1:] if keep else line
            self.rules.append((keep, [p for p in pattern.strip("/").split("/") if p and p != "."]))

    def excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        verdict = False
        for keep, pattern in self.rules:
            if any(_match(pattern, parts[:end]) for end in range(1, len(parts) + 1)):
                verdict = not keep
        return verdict


def _match(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match(pattern[1:], parts[skip:]) for skip in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match(pattern[1:], parts[1:])


@dataclass
class Replay:
    dockerfile: Dockerfile
    context: Path
    ignore: DockerIgnore
    python: Path
    scratch: Path
    log: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """Where the stage being replayed keeps its absolute paths."""
        return self.scratch / "root"

    def staged(self, path: str) -> str:
        if not path.startswith("/") or path.startswith(UNSTAGED) or path == "/dev/null":
            return path
        return str(self.root) + path

    def staged_line(self, line: str) -> str:
        """A shell line with its absolute paths under the scratch root."""

        def one(match: re.Match[str]) -> str:
            rest = line[match.start() :]
            return "/" if rest.startswith(UNSTAGED) else str(self.root) + "/"

        return ABSOLUTE_PATH.sub(one, line)

    def base_environment(self) -> dict[str, str]:
        """The base image's environment (python:3.11: LANG and PATH), plus the caller's index settings."""
        bin_dir = self.scratch / "base-bin"
        bin_dir.mkdir(exist_ok=True)
        for name in ("python", "python3", "python3.11"):
            link = bin_dir / name
            if not link.exists():
                link.symlink_to(self.python)
        apt = bin_dir / "apt-get"
        apt.write_text(APT_GET_SHIM)
        apt.chmod(0o755)
        environment = {key: value for key, value in os.environ.items() if PASSED_ENV.match(key)}
        environment.update(
            LANG="C.UTF-8",
            PATH=f"{bin_dir}:{self.python.parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        return environment

    def run(self, builds: int) -> dict[str, object]:
        args = self._global_args()
        wheels: list[dict[str, str]] = []
        final: tuple[dict[str, str], str, list[str]] | None = None
        for build in range(builds):
            stage_roots: dict[str, Path] = {}
            for stage in self.dockerfile.stages:
                final = self._stage(stage, args, stage_roots)
                stage_roots[stage.name] = self.scratch / f"stage-{build}-{stage.name}"
                self.root.rename(stage_roots[stage.name])
            first = stage_roots[self.dockerfile.stages[0].name]
            wheels.append(
                {
                    path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                    for path in sorted((first / "wheels").glob("*.whl"))
                }
            )
            last = stage_roots.pop(self.dockerfile.stages[-1].name)
            for earlier in stage_roots.values():
                shutil.rmtree(earlier)
            if build + 1 < builds:
                shutil.rmtree(last)
            else:
                last.rename(self.root)
        assert final is not None
        environment, workdir, command = final
        return {"wheels": wheels, **self._start(environment, workdir, command)}

    def _global_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        for instruction in self.dockerfile.global_args:
            for name, value in assignments(instruction.arguments):
                if value is not None:
                    args[name] = expand(value, args)
        return args

    def _stage(
        self, stage: Stage, global_args: dict[str, str], earlier: dict[str, Path]
    ) -> tuple[dict[str, str], str, list[str]]:
        image = expand(stage.base, global_args)
        tag = image.split("@", 1)[0]
        version = _python_version(self.python)
        if not tag.startswith(f"python:{version}."):
            raise ReplayError(f"FROM {image}: the replay stands in Python {version} for python:{version}.*")
        self.log.append(f"FROM {image} (as {stage.name}): {self.python}")
        self.root.mkdir()
        environment = self.base_environment()
        args: dict[str, str] = {}
        workdir = "/"
        entrypoint: list[str] = []
        command: list[str] = []
        for instruction in stage.instructions:
            variables = {**global_args, **args, **environment}
            keyword, arguments = instruction.keyword, instruction.arguments
            where = f"Dockerfile line {instruction.line}: {keyword}"
            if keyword == "ARG":
                for name, value in assignments(arguments):
                    if value is not None:
                        args[name] = expand(value, variables)
                    elif name in global_args:
                        args[name] = global_args[name]
            elif keyword == "ENV":
                for name, value in assignments(arguments):
                    if value is None:
                        raise ReplayError(f"{where} {name} without a value")
                    # Staged before expansion: $PATH's own entries are this machine's, not the image's.
                    environment[name] = expand(self._staged_value(name, value), variables)
            elif keyword == "WORKDIR":
                workdir = str(Path(workdir, expand(arguments, variables)))
                Path(self.staged(workdir)).mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                self._copy(where, expand(arguments, variables), workdir, earlier)
            elif keyword == "RUN":
                self._run(where, arguments, {**args, **environment}, workdir)
            elif keyword in ("ENTRYPOINT", "CMD"):
                words = json.loads(arguments)
                if keyword == "ENTRYPOINT":
                    entrypoint = words
                else:
                    command = words
            elif keyword not in ("LABEL", "EXPOSE", "HEALTHCHECK", "STOPSIGNAL", "USER"):
                raise ReplayError(f"{where} is not replayed")
        return environment, workdir, [self.staged_line(word) for word in entrypoint + command]

    def _staged_value(self, name: str, value: str) -> str:
        if name == "PATH":
            return ":".join(self.staged(part) for part in value.split(":"))
        return self.staged(value) if value.startswith("/") else value

    def _copy(self, where: str, arguments: str, workdir: str, earlier: dict[str, Path]) -> None:
        words = arguments.split()
        source_root = self.context
        from_stage = None
        while words and words[0].startswith("--"):
            flag, _, value = words.pop(0).partition("=")
            if flag != "--from":
                raise ReplayError(f"{where} {flag} is not replayed")
            from_stage = value
        if from_stage is not None:
            if from_stage not in earlier:
                raise ReplayError(f"{where} --from={from_stage}: no earlier stage of that name")
            source_root = earlier[from_stage]
        *sources, destination = words
        target = Path(self.staged(str(Path(workdir, destination))))
        into_directory = destination.endswith("/") or len(sources) > 1
        for source in sources:
            origin = source_root / source.lstrip("/")
            relative = source.strip("/")
            if from_stage is None and self.ignore.excluded(relative):
                raise ReplayError(f"{where} {source}: excluded from the build context by .dockerignore")
            if not origin.exists():
                raise ReplayError(f"{where} {source}: not in the {'stage' if from_stage else 'context'}")
            if origin.is_dir():
                self._copy_tree(origin, target, relative if from_stage is None else None)
            else:
                destination_file = target / origin.name if into_directory else target
                destination_file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, destination_file)
        self.log.append(f"{where} {arguments}")

    def _copy_tree(self, origin: Path, target: Path, context_relative: str | None) -> None:
        """A directory's contents into ``target``; from the context, without what .dockerignore excludes."""
        for path in sorted(origin.rglob("*")):
            inside = path.relative_to(origin).as_posix()
            if context_relative is not None and self.ignore.excluded(f"{context_relative}/{inside}"):
                continue
            destination = target / inside
            if path.is_symlink():
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.symlink_to(os.readlink(path))
            elif path.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)
        target.mkdir(parents=True, exist_ok=True)

    def _run(self, where: str, arguments: str, environment: dict[str, str], workdir: str) -> None:
        if arguments.startswith("["):
            raise ReplayError(f"{where}: the exec form is not replayed")
        line = self.staged_line(arguments)
        self.log.append(f"{where} {arguments}")
        started = time.monotonic()
        result = subprocess.run(  # noqa: S603 (the repository's own Dockerfile line)
            ["/bin/sh", "-c", line],
            cwd=self.staged(workdir),
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        self.log.append(f"  exit {result.returncode} in {time.monotonic() - started:.0f}s")
        if result.returncode != 0:
            # pip's notes about index locations this machine lacks are noise here.
            output = [
                text
                for text in (result.stdout + result.stderr).strip().splitlines()
                if not text.startswith("WARNING: Location")
            ]
            raise ReplayError(f"{where} failed (exit {result.returncode}):\n" + "\n".join(output[-25:]))

    def _start(self, environment: dict[str, str], workdir: str, command: list[str]) -> dict[str, object]:
        """Start the final stage's ENTRYPOINT + CMD with a config where CMD names it; ask /readyz."""
        config_path = next((Path(word) for word in command if word.endswith(".yaml")), None)
        if config_path is None:
            raise ReplayError(f"ENTRYPOINT + CMD {command} names no config file to write")
        listen, admin = _free_port(), _free_port()
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(
            json.dumps(
                {
                    "listen": f"127.0.0.1:{listen}",
                    "admin_listen": f"127.0.0.1:{admin}",
                    "customers_canvas": {
                        "api_url": "http://127.0.0.1:9",
                        "client_id": "image-replay",
                        "client_secret": "${CC_CLIENT_SECRET}",
                    },
                    "secret": "${CC_SIDECAR_SECRET}",
                    "storefronts": [{"name": "main", "storefront_id": 1, "upstream": "http://127.0.0.1:9"}],
                }
            )
        )
        executable = shutil.which(command[0], path=environment.get("PATH"))
        if executable is None:
            raise ReplayError(f"ENTRYPOINT {command[0]} is not on the final stage's PATH")
        site_packages = sorted(Path(executable).resolve().parent.parent.glob("lib/python*/site-packages"))
        distributions = sorted(
            path.name.split("-", 1)[0].lower().replace("_", "-")
            for directory in site_packages
            for path in directory.glob("*.dist-info")
        )
        process = subprocess.Popen(  # noqa: S603 (what the replay built)
            [executable, *command[1:]],
            cwd=self.staged(workdir),
            env={
                **environment,
                "CC_CLIENT_SECRET": "image-replay",
                "CC_SIDECAR_SECRET": "image-replay-secret-0123",
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        stderr = ""
        try:
            ready = _wait_ready(f"http://127.0.0.1:{admin}/readyz", process)
        finally:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                stderr = process.communicate(timeout=30)[1]
            if process.poll() is None:
                process.kill()
                stderr = process.communicate()[1]
        start_line = next((line for line in stderr.splitlines() if "cc-sidecar listening" in line), None)
        return {
            "readyz": ready,
            "exit_after_sigterm": process.returncode,
            "start_line": json.loads(start_line) if start_line else None,
            "distributions": distributions,
            "log": self.log,
        }


def verify(result: dict[str, object]) -> list[str]:
    """What the image must be: /readyz 200 from the compiled request path, the same wheel from every
    build, and neither pip nor setuptools (nor setuptools' leftovers) in the runtime venv."""
    problems = []
    if result["readyz"] != 200:
        problems.append(f"/readyz answered {result['readyz']}")
    start_line = result["start_line"]
    if not isinstance(start_line, dict) or start_line.get("compiled") is not True:
        problems.append(f"the start-up line does not say compiled: {start_line}")
    if result["exit_after_sigterm"] != 0:
        problems.append(f"SIGTERM ended it with exit {result['exit_after_sigterm']}, not 0")
    wheels = result["wheels"]
    assert isinstance(wheels, list)
    if not wheels or not wheels[0]:
        problems.append("the build stage left no wheel in /wheels")
    elif any(build != wheels[0] for build in wheels[1:]):
        problems.append(f"the builds gave different wheels: {wheels}")
    distributions = result["distributions"]
    assert isinstance(distributions, list)
    for unwanted in ("pip", "setuptools", "wheel"):
        if unwanted in distributions:
            problems.append(f"the runtime venv has {unwanted}")
    return problems


def _python_version(python: Path) -> str:
    out = subprocess.run(  # noqa: S603 (the interpreter the caller named)
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[str], within_s: float = 30) -> int:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.stderr is not None
            raise ReplayError(
                f"the built cc-sidecar exited {process.returncode}: {process.stderr.read()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback http)
                return int(response.status)
        except OSError:
            time.sleep(0.1)
    raise ReplayError(f"{url} never answered within {within_s}s")


def default_python() -> Path:
    if PYENV_311.exists():
        return PYENV_311
    found = shutil.which("python3.11")
    if found is None:
        raise ReplayError("no Python 3.11 to stand in for the base image (--python PATH)")
    return Path(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python", type=Path, help="the interpreter standing in for the base image")
    parser.add_argument("--builds", type=int, default=1, help="replay the whole build this many times")
    parser.add_argument("--keep", type=Path, help="replay in this (new) directory and keep it")
    parser.add_argument("--check", action="store_true", help="exit 1 unless verify() finds nothing")
    args = parser.parse_args(argv)
    try:
        python = args.python or default_python()
        scratch = args.keep or Path(tempfile.mkdtemp(prefix="image-replay-"))
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            replay = Replay(
                parse(DOCKERFILE.read_text(encoding="utf-8")),
                ROOT,
                DockerIgnore(DOCKERIGNORE.read_text(encoding="utf-8")),
                python,
                scratch,
            )
            result = replay.run(args.builds)
        finally:
            if args.keep is None:
                shutil.rmtree(scratch, ignore_errors=True)
    except ReplayError as error:
        print(f"image-replay: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    problems = verify(result) if args.check else []
    for problem in problems:
        print(f"image-replay: FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
