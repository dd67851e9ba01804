#!/usr/bin/env bash
# Installs pinned checkov (PyPI; the policy checks of `make chart-check` on the rendered manifests) into
# .tools/checkov. The checkov wheel is checked against a pinned sha256; its dependencies are pinned by
# version in tools/checkov-constraints.txt. About a minute the first time; idempotent (a stamp records
# what is installed). Its own venv: its ~95 dependencies stay out of the lint tools' venv.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

CHECKOV_VERSION=3.3.30
CHECKOV_WHEEL_SHA256=32c3d6a808399f3fd6ec83e68a337050d17f019336f4d8f3b23aae469ba79408

VENV="$TOOLS/checkov"
CONSTRAINTS="$ROOT/tools/checkov-constraints.txt"
want="checkov==$CHECKOV_VERSION $(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
if [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$want" ] && [ -x "$VENV/bin/checkov" ]; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "tools: installing checkov $CHECKOV_VERSION" >&2
wheel="$(fetch_wheel checkov "$CHECKOV_VERSION" "$CHECKOV_WHEEL_SHA256" "$tmp")"
rm -rf "$VENV"
"$(tools_python)" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --constraint "$CONSTRAINTS" "$wheel"
"$VENV/bin/checkov" --version >&2
echo "$want" >"$VENV/.stamp"
