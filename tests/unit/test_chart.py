"""The Helm chart, rendered by the pinned helm and asserted object by object.

Each test renders helm/cc-sidecar (or a chart that includes it) with `helm template` and looks at
the objects Kubernetes would get. helm comes from tools/install-helm.sh (pinned, into .tools/), which
the first test installs when it is missing.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "cc-sidecar"
HELM = ROOT / ".tools" / "bin" / "helm"
SECRETS = {"secrets": {"clientSecret": "test-client-secret", "sidecarSecret": "test-sidecar-secret-0123"}}
STANDALONE = {"mode": "standalone", "upstream": "http://shop.shop.svc:80", **SECRETS}
SIDECAR = {"mode": "sidecar", **SECRETS}


def _chart_assert() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_assert", ROOT / "tools" / "chart_assert.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chart_assert = _chart_assert()


@pytest.fixture(scope="session")
def helm() -> Path:
    if not HELM.exists():
        subprocess.run([str(ROOT / "tools" / "install-helm.sh")], check=True, timeout=300)
    return HELM


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
        "PATH": "/usr/bin:/bin",
    }


def render(helm: Path, tmp_path: Path, values: dict[str, Any], chart: Path = CHART) -> list[dict[str, Any]]:
    """The objects `helm template` makes of ``chart`` with ``values``."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = subprocess.run(
        [str(helm), "template", "ci", str(chart), "-f", str(values_file)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def refused(helm: Path, tmp_path: Path, values: dict[str, Any]) -> str:
    """helm's error message for ``values`` (the render must fail)."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = subprocess.run(
        [str(helm), "template", "ci", str(CHART), "-f", str(values_file)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        check=False,
        timeout=60,
    )
    assert result.returncode != 0, "the chart rendered"
    return result.stderr


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(one(docs, "Deployment")["spec"]["template"]["spec"])


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return dict(found)


def sidecar_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and "sidecar.yaml" in d["data"]]
    return dict(yaml.safe_load(configmap["data"]["sidecar.yaml"]))


# --- safe defaults ---------------------------------------------------------------------------------


def test_default_storefront_believes_no_identity_header_from_anyone(helm: Path, tmp_path: Path) -> None:
    """With the chart's defaults no storefront has an identity header or a trusted network."""
    config = sidecar_config(render(helm, tmp_path, STANDALONE))
    (storefront,) = config["storefronts"]
    assert "trusted_networks" not in storefront
    assert storefront.get("user", {}).get("header") is None


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
def test_external_service_keeps_client_addresses(helm: Path, tmp_path: Path, service_type: str) -> None:
    """A LoadBalancer or NodePort Service gets externalTrafficPolicy Local by default."""
    service = one(render(helm, tmp_path, {**STANDALONE, "service": {"type": service_type}}), "Service")
    assert service["spec"]["externalTrafficPolicy"] == "Local"


def test_load_balancer_source_ranges_are_passed_on(helm: Path, tmp_path: Path) -> None:
    """service.loadBalancerSourceRanges lands on a LoadBalancer Service."""
    values = {
        **STANDALONE,
        "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["203.0.113.0/24"]},
    }
    service = one(render(helm, tmp_path, values), "Service")
    assert service["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]


# --- port names ------------------------------------------------------------------------------------


def test_chart_services_target_cc_sidecar_by_number(helm: Path, tmp_path: Path) -> None:
    """The chart's own Services target cc-sidecar's ports by number, named cc-http/cc-admin in the pod."""
    docs = render(helm, tmp_path, {**SIDECAR, "metrics": {"service": {"enabled": True}}})
    targets = sorted(p["targetPort"] for d in docs if d["kind"] == "Service" for p in d["spec"]["ports"])
    assert targets == [8080, 9090]
    ports = {p["name"]: p["containerPort"] for p in container(pod_spec(docs), "cc-sidecar")["ports"]}
    assert ports == {"cc-http": 8080, "cc-admin": 9090}
    assert chart_assert.check_services("sidecar", docs) == []


# The steps of helm/cc-sidecar/README.md, "Adding cc-sidecar to your own shop chart", applied to a
# fresh `helm create` chart. Each snippet must appear in the README verbatim.
README_VALUES = """cc-sidecar:
  mode: sidecar
  shop: {enabled: false, port: 8000}    # your shop listens on 127.0.0.1:8000
  secrets: {existingSecret: shop-cc-credentials}
"""
README_POD_ANNOTATIONS = """{{- include "cc-sidecar.podAnnotations" $cc | nindent 8 }}"""
README_SHOP_LIFECYCLE = """          lifecycle:
            {{- include "cc-sidecar.shopLifecycle" $cc | nindent 12 }}"""
README_CONTAINER = """        {{- include "cc-sidecar.container" $cc | nindent 8 }}"""
README_VOLUMES = """        {{- include "cc-sidecar.volume" $cc | nindent 8 }}"""
README_SERVICE_TARGET = "targetPort: cc-http"
README_PROBE = """livenessProbe:
  httpGet:
    path: /
    port: 8080                 # cc-sidecar's cc-http port, by number
    httpHeaders:
      - {name: Host, value: shop.example.com}   # a host of one of your storefronts
"""


def _helm_create_shop(helm: Path, tmp_path: Path) -> Path:
    """A `helm create` chart changed the way the README says."""
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    for snippet in (
        README_VALUES,
        README_POD_ANNOTATIONS,
        README_SHOP_LIFECYCLE,
        README_CONTAINER,
        README_VOLUMES,
        README_SERVICE_TARGET,
        README_PROBE,
    ):
        assert snippet in readme, f"the README no longer says:\n{snippet}"
    subprocess.run([str(helm), "create", "myshop"], cwd=tmp_path, env=_env(tmp_path), check=True, timeout=60)
    shop = tmp_path / "myshop"
    (shop / "charts").mkdir(exist_ok=True)
    subprocess.run(["cp", "-r", str(CHART), str(shop / "charts" / "cc-sidecar")], check=True)
    chart_yaml = shop / "Chart.yaml"
    chart_yaml.write_text(
        chart_yaml.read_text() + "dependencies:\n  - name: cc-sidecar\n    version: 0.2.0\n"
    )
    values = yaml.safe_load((shop / "values.yaml").read_text())
    values.update(yaml.safe_load(README_VALUES))
    values["cc-sidecar"]["config"] = {
        "customers_canvas": {"client_id": "shop-app"},
        "storefronts": [{"name": "shop", "storefront_id": 12, "hosts": ["shop.example.com"]}],
    }
    probe = yaml.safe_load(README_PROBE)["livenessProbe"]
    values["livenessProbe"] = values["readinessProbe"] = probe
    (shop / "values.yaml").write_text(yaml.safe_dump(values))
    deployment = shop / "templates" / "deployment.yaml"
    text = deployment.read_text()
    text = '{{- $cc := index .Subcharts "cc-sidecar" }}\n' + text
    text = text.replace(
        "    metadata:\n      {{- with .Values.podAnnotations }}\n      annotations:\n",
        "    metadata:\n      annotations:\n        "
        + README_POD_ANNOTATIONS
        + "\n      {{- with .Values.podAnnotations }}\n",
    )
    text = text.replace(
        "          {{- with .Values.livenessProbe }}",
        README_SHOP_LIFECYCLE + "\n          {{- with .Values.livenessProbe }}",
    )
    text = re.sub(
        r"(\n      {{- with \.Values\.volumes }}\n      volumes:\n        {{- toYaml \. \| nindent 8 }}\n      {{- end }})",
        "\n" + README_CONTAINER + "\n      volumes:\n" + README_VOLUMES + "\n"
        "        {{- with .Values.volumes }}\n        {{- toYaml . | nindent 8 }}\n        {{- end }}",
        text,
    )
    for snippet in (README_CONTAINER, README_VOLUMES, README_SHOP_LIFECYCLE):
        assert snippet in text, f"the helm create chart's deployment.yaml changed: {snippet} not placed"
    deployment.write_text(text)
    service = shop / "templates" / "service.yaml"
    service.write_text(service.read_text().replace("targetPort: http", README_SERVICE_TARGET))
    return shop


def test_helm_create_shop_chart_following_the_readme_sends_every_service_port_to_cc_sidecar(
    helm: Path, tmp_path: Path
) -> None:
    """A `helm create` shop chart changed as the README says: its Service reaches cc-sidecar, not the shop."""
    shop = _helm_create_shop(helm, tmp_path)
    docs = render(helm, tmp_path, {}, chart=shop)
    assert [d for d in docs if d["kind"] == "Service"], "the shop chart rendered no Service"
    assert chart_assert.check_services("myshop", docs) == []
    spec = pod_spec(docs)
    shop_container = container(spec, "myshop")
    assert shop_container["livenessProbe"]["httpGet"]["port"] == 8080


def test_helm_create_shop_container_outlives_cc_sidecar_drain(helm: Path, tmp_path: Path) -> None:
    """The README's shop lifecycle gives the included shop a preStop of preStop sleep + shutdown_grace_s."""
    docs = render(helm, tmp_path, {}, chart=_helm_create_shop(helm, tmp_path))
    command = container(pod_spec(docs), "myshop")["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["sleep", "25"]


# --- rollouts --------------------------------------------------------------------------------------


def test_chart_shop_containers_sleep_until_cc_sidecar_has_drained(helm: Path, tmp_path: Path) -> None:
    """The chart's shop container and an extra one (php-fpm) get preStop sleep 5 + shutdown_grace_s 30."""
    values = {
        **SIDECAR,
        "config": {"shutdown_grace_s": 30},
        "shop": {"extraContainers": [{"name": "php-fpm", "image": "php:8.3-fpm-alpine"}]},
    }
    spec = pod_spec(render(helm, tmp_path, values))
    for name in ("shop", "php-fpm"):
        assert container(spec, name)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "35"]


def test_shop_lifecycle_value_replaces_the_default(helm: Path, tmp_path: Path) -> None:
    """shop.lifecycle is the shop container's lifecycle, verbatim."""
    lifecycle = {"preStop": {"sleep": {"seconds": 40}}}
    spec = pod_spec(render(helm, tmp_path, {**SIDECAR, "shop": {"lifecycle": lifecycle}}))
    assert container(spec, "shop")["lifecycle"] == lifecycle


def test_native_sidecar_is_an_init_container_that_gates_the_shop(helm: Path, tmp_path: Path) -> None:
    """nativeSidecar: cc-sidecar is an init container, restartPolicy Always, startupProbe /readyz by number."""
    docs = render(helm, tmp_path, {**SIDECAR, "nativeSidecar": True})
    spec = pod_spec(docs)
    assert [c["name"] for c in spec["containers"]] == ["shop"]
    (init,) = spec["initContainers"]
    assert init["name"] == "cc-sidecar"
    assert init["restartPolicy"] == "Always"
    assert init["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 9090}
    assert chart_assert.check_services("native", docs) == []


# --- medium: availability, scaling, schema ---------------------------------------------------------


def test_disruption_budget_lets_one_pod_go_when_two_run(helm: Path, tmp_path: Path) -> None:
    """By default two pods get a PodDisruptionBudget with maxUnavailable 1."""
    budget = one(render(helm, tmp_path, STANDALONE), "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]


def test_single_pod_gets_no_disruption_budget(helm: Path, tmp_path: Path) -> None:
    """One pod gets no PodDisruptionBudget (it would block every node drain)."""
    assert "PodDisruptionBudget" not in kinds(render(helm, tmp_path, {**STANDALONE, "replicaCount": 1}))


def test_min_available_of_every_pod_is_refused(helm: Path, tmp_path: Path) -> None:
    """podDisruptionBudget.minAvailable equal to the pod count is refused, naming the value."""
    message = refused(helm, tmp_path, {**STANDALONE, "podDisruptionBudget": {"minAvailable": 2}})
    assert "podDisruptionBudget.minAvailable: 2 of 2 pods" in message


def test_pods_spread_softly_over_nodes_and_zones(helm: Path, tmp_path: Path) -> None:
    """Without constraints of one's own, the pods spread over hostname and zone, ScheduleAnyway."""
    constraints = pod_spec(render(helm, tmp_path, STANDALONE))["topologySpreadConstraints"]
    assert [(c["topologyKey"], c["whenUnsatisfiable"]) for c in constraints] == [
        ("kubernetes.io/hostname", "ScheduleAnyway"),
        ("topology.kubernetes.io/zone", "ScheduleAnyway"),
    ]


def test_sidecar_autoscaler_scales_on_cc_sidecar_container_cpu(helm: Path, tmp_path: Path) -> None:
    """In sidecar mode the HPA's metric is cc-sidecar's ContainerResource CPU, with the chart's behavior."""
    values = {**SIDECAR, "autoscaling": {"enabled": True}}
    hpa = one(render(helm, tmp_path, values), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "ContainerResource"
    assert metric["containerResource"]["container"] == "cc-sidecar"
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 300}}


def test_memory_request_covers_steady_rss(helm: Path, tmp_path: Path) -> None:
    """cc-sidecar's memory request is at least the measured steady RSS of 101 MiB."""
    resources = container(pod_spec(render(helm, tmp_path, STANDALONE)), "cc-sidecar")["resources"]
    request = resources["requests"]["memory"]
    assert request.endswith("Mi")
    assert int(request[:-2]) >= 101


def _tmp_volume(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (volume,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == "cc-sidecar-tmp"]
    return dict(volume)


def test_temp_files_budget_is_four_fifths_of_the_default_tmp_dir(helm: Path, tmp_path: Path) -> None:
    """By default /tmp is a 320Mi emptyDir and the temp files may hold 256 MiB of it."""
    docs = render(helm, tmp_path, STANDALONE)

    assert _tmp_volume(docs)["emptyDir"] == {"sizeLimit": "320Mi"}
    assert sidecar_config(docs)["buffering"] == {"max_temp_bytes": 256 * 1024 * 1024}


@pytest.mark.parametrize(
    ("size_limit", "budget"),
    [("1Gi", 858993459), ("500M", 400000000), (10485760, 8388608)],
    ids=["Gi", "M", "bytes"],
)
def test_temp_files_budget_follows_the_tmp_dir_size_limit(
    helm: Path, tmp_path: Path, size_limit: str | int, budget: int
) -> None:
    """tmpDir.sizeLimit in any unit (or in bytes) makes max_temp_bytes four fifths of it, in whole bytes."""
    docs = render(helm, tmp_path, {**STANDALONE, "tmpDir": {"sizeLimit": size_limit}})

    assert sidecar_config(docs)["buffering"]["max_temp_bytes"] == budget


def test_temp_files_budget_given_below_the_tmp_dir_is_kept(helm: Path, tmp_path: Path) -> None:
    """config.buffering.max_temp_bytes below tmpDir.sizeLimit goes to the sidecar as given, beside other keys."""
    values = {**STANDALONE, "config": {"buffering": {"max_temp_bytes": 100000000, "body_memory_bytes": 1024}}}

    buffering = sidecar_config(render(helm, tmp_path, values))["buffering"]

    assert buffering == {"max_temp_bytes": 100000000, "body_memory_bytes": 1024}


def test_temp_files_budget_not_below_the_tmp_dir_is_refused(helm: Path, tmp_path: Path) -> None:
    """A budget of the emptyDir's whole size would get the pod evicted: the render fails, naming both values."""
    values = {
        **STANDALONE,
        "tmpDir": {"sizeLimit": "64Mi"},
        "config": {"buffering": {"max_temp_bytes": 67108864}},
    }

    message = refused(helm, tmp_path, values)

    assert (
        "config.buffering.max_temp_bytes: 67108864 must stay below tmpDir.sizeLimit (64Mi: 67108864 bytes)"
        in message
    )


def test_temp_files_elsewhere_get_no_budget_from_the_tmp_dir(helm: Path, tmp_path: Path) -> None:
    """With config.buffering.temp_dir outside /tmp the emptyDir says nothing about the budget: none is set."""
    values = {**STANDALONE, "config": {"buffering": {"temp_dir": "/spool"}}}

    assert sidecar_config(render(helm, tmp_path, values))["buffering"] == {"temp_dir": "/spool"}


def test_tmp_dir_size_limit_with_a_fraction_is_refused(helm: Path, tmp_path: Path) -> None:
    """1.5Gi cannot be read by the template: the render fails saying what it takes."""
    message = refused(helm, tmp_path, {**STANDALONE, "tmpDir": {"sizeLimit": "1.5Gi"}})

    assert "tmpDir.sizeLimit: 1.5Gi: give bytes, or a whole number of k, M, G, T, Ki, Mi, Gi or Ti" in message


def test_probe_with_its_own_handler_replaces_the_chart_probe(helm: Path, tmp_path: Path) -> None:
    """A livenessProbe value with exec renders exec without the chart's httpGet (timings still merge)."""
    probe = {"exec": {"command": ["true"]}, "periodSeconds": 7}
    sidecar = container(
        pod_spec(render(helm, tmp_path, {**STANDALONE, "livenessProbe": probe})), "cc-sidecar"
    )
    assert sidecar["livenessProbe"] == {**probe, "timeoutSeconds": 2, "failureThreshold": 3}


def test_image_digest_must_be_sha256_and_64_hex(helm: Path, tmp_path: Path) -> None:
    """image.digest that is not sha256:<64 hex> is refused by the values schema."""
    message = refused(helm, tmp_path, {**STANDALONE, "image": {"digest": "sha256:abc"}})
    assert "image.digest" in message


def test_shutdown_grace_must_be_a_number(helm: Path, tmp_path: Path) -> None:
    """config.shutdown_grace_s given as ${VAR} is refused (the chart adds it up)."""
    message = refused(helm, tmp_path, {**STANDALONE, "config": {"shutdown_grace_s": "${GRACE}"}})
    assert "shutdown_grace_s" in message


def test_ipv6_listen_address_passes_check_config(helm: Path, tmp_path: Path) -> None:
    """listenAddress :: renders [::]:8080 and [::]:9090, which check-config accepts."""
    docs = render(helm, tmp_path, {**STANDALONE, "listenAddress": "::"})
    config = sidecar_config(docs)
    assert (config["listen"], config["admin_listen"]) == ("[::]:8080", "[::]:9090")
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert chart_assert._check_config_text("ipv6", configmap["data"]["sidecar.yaml"], {}) == []


def test_network_policy_admits_shop_traffic_and_metrics_only(helm: Path, tmp_path: Path) -> None:
    """networkPolicy.enabled: ingress on 8080 from the ingress namespace and 9090 from monitoring."""
    policy = one(render(helm, tmp_path, {**STANDALONE, "networkPolicy": {"enabled": True}}), "NetworkPolicy")
    ingress = [
        (rule["from"][0]["namespaceSelector"]["matchLabels"], [p["port"] for p in rule["ports"]])
        for rule in policy["spec"]["ingress"]
    ]
    assert ingress == [
        ({"kubernetes.io/metadata.name": "ingress-nginx"}, [8080]),
        ({"kubernetes.io/metadata.name": "monitoring"}, [9090]),
    ]
    egress_ports = sorted(p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"])
    assert egress_ports == [53, 53, 443]


def test_pod_monitor_scrapes_the_cc_admin_port(helm: Path, tmp_path: Path) -> None:
    """metrics.podMonitor.enabled makes a PodMonitor on cc-admin /metrics of the selected pods."""
    values = {
        **SIDECAR,
        "shop": {"enabled": False},
        "metrics": {"podMonitor": {"enabled": True, "podSelector": {"app": "shop"}}},
    }
    monitor = one(render(helm, tmp_path, values), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {"app": "shop"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("cc-admin", "/metrics")


def _exported_metric_names() -> set[str]:
    """Sample names the sidecar's /metrics can carry (counters as _total, histograms' series)."""
    from prometheus_client import generate_latest

    from proxy.metrics import Metrics

    names: set[str] = set()
    for line in generate_latest(Metrics().registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind == "histogram":
                names |= {name + suffix for suffix in ("_bucket", "_sum", "_count")}
            else:
                names.add(name)
    return names


def test_prometheus_rule_and_dashboard_query_only_exported_metrics(helm: Path, tmp_path: Path) -> None:
    """Every cc_sidecar_* name in the PrometheusRule and the dashboard is one the sidecar exports."""
    values = {**STANDALONE, "metrics": {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
    docs = render(helm, tmp_path, values)
    rule = one(docs, "PrometheusRule")
    alerts = [r["alert"] for r in rule["spec"]["groups"][0]["rules"]]
    assert alerts == [
        "CcSidecarApiBreakerOpen",
        "CcSidecarApiFailing",
        "CcSidecarTokenUnavailable",
        "CcSidecarShop5xx",
        "CcSidecarSessionCheckMisconfigured",
        "CcSidecarTokenStoreUnavailable",
        "CcSidecarTempSpaceFull",
    ]
    (dashboard,) = [d for d in docs if d["kind"] == "ConfigMap" and "cc-sidecar.json" in d.get("data", {})]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    queried = set(re.findall(r"cc_sidecar_\w+", yaml.safe_dump(rule) + dashboard["data"]["cc-sidecar.json"]))
    assert queried
    assert queried - _exported_metric_names() == set()


def test_prometheus_rule_alerts_on_uploads_refused_for_temp_space(helm: Path, tmp_path: Path) -> None:
    """CcSidecarTempSpaceFull fires while request bodies of a pod get 503 for want of temp space."""
    values = {**STANDALONE, "metrics": {"prometheusRule": {"enabled": True}}}
    rules = one(render(helm, tmp_path, values), "PrometheusRule")["spec"]["groups"][0]["rules"]
    (rule,) = [r for r in rules if r["alert"] == "CcSidecarTempSpaceFull"]

    assert rule["expr"] == (
        'sum by (namespace, pod) (rate(cc_sidecar_temp_refused_total{body="request",namespace="default"}[5m])) > 0'
    )


def test_secrets_from_files_start_the_sidecar_with_their_contents(helm: Path, tmp_path: Path) -> None:
    """secrets.files: the rendered command reads both files into the config's variables; no Secret is made."""
    files = {"clientSecret": str(tmp_path / "client"), "sidecarSecret": str(tmp_path / "sidecar")}
    docs = render(helm, tmp_path, {**STANDALONE, "secrets": {"files": files}})
    assert "Secret" not in kinds(docs)
    sidecar = container(pod_spec(docs), "cc-sidecar")
    assert "env" not in sidecar
    (tmp_path / "client").write_text("client-secret-from-a-file\n")
    (tmp_path / "sidecar").write_text("sidecar-secret-from-a-file-0123\n")
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    config = tmp_path / "sidecar.yaml"
    config.write_text(configmap["data"]["sidecar.yaml"])
    # The container's own command, with check-config for run: it starts only with both variables set.
    command = [*sidecar["command"], "check-config", "--config", str(config)]
    environ = {"PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin"}
    passed = subprocess.run(command, env=environ, capture_output=True, text=True, check=False, timeout=60)
    assert passed.returncode == 0, passed.stderr
    (tmp_path / "sidecar").unlink()
    missing = subprocess.run(command, env=environ, capture_output=True, text=True, check=False, timeout=60)
    assert missing.returncode != 0
    assert "No such file" in missing.stderr


def test_common_labels_namespace_and_extra_objects_reach_every_object(helm: Path, tmp_path: Path) -> None:
    """commonLabels and namespaceOverride land on every object, extraObjects render templated."""
    extra = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .Release.Name }}-extra"}}
    values = {
        **STANDALONE,
        "commonLabels": {"example.com/team": "shop"},
        "namespaceOverride": "storefront",
        "extraObjects": [extra],
    }
    docs = render(helm, tmp_path, values)
    assert "ci-extra" in [d["metadata"]["name"] for d in docs]
    own = [d for d in docs if d["metadata"]["name"] != "ci-extra"]
    assert {d["metadata"]["namespace"] for d in own} == {"storefront"}
    assert all(d["metadata"]["labels"]["example.com/team"] == "shop" for d in own)
    assert one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]["example.com/team"] == "shop"
