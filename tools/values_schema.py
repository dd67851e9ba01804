"""Write helm/cc-sidecar/values.schema.json: the chart's own values by hand, `config` from the model.

    python tools/values_schema.py           write the file
    python tools/values_schema.py --check   exit 1 if the committed file is not what would be written

The `config` part is the JSON Schema `cc-sidecar config-schema` prints (``Settings``), adapted to
what the chart's `config` holds: `listen`, `admin_listen`, `secret` and
`customers_canvas.client_secret` are set by the chart and absent here (so giving one is refused as
an unknown key); a storefront's `upstream` may be left out (the chart fills it in); `${VAR}`
references are accepted wherever the sidecar accepts them (a number may be written as one);
references are inlined (no ``$defs``), so every error names a plain path. The chart's own keys
are closed (``additionalProperties: false``); Kubernetes objects passed through verbatim
(resources, affinity, probes, securityContext...) are left to the API server's own validation.
`make chart-schema` runs this; a test and `make chart-check` fail when the file is stale.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.config import Settings  # noqa: E402 - after the repository is on the path

SCHEMA_PATH = ROOT / "helm" / "cc-sidecar" / "values.schema.json"
# Keys of the sidecar's file that the chart renders itself.
CHART_SET_KEYS = ("listen", "admin_listen", "secret")
# A whole `${NAME}` / `${NAME:-default}` reference, where the file expects a number or a boolean.
ENV_REFERENCE = {"type": "string", "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$"}
# pydantic annotations a values file has no use for.
_DROPPED = ("title", "format", "writeOnly")


def config_schema() -> dict[str, Any]:
    """The schema of the chart's `config`, from the same model as `cc-sidecar config-schema`."""
    model = Settings.model_json_schema()
    definitions = model.pop("$defs", {})
    schema: dict[str, Any] = _inline(model, definitions)
    for key in CHART_SET_KEYS:
        schema["properties"].pop(key)
    schema["required"] = [key for key in schema["required"] if key not in CHART_SET_KEYS]
    api = schema["properties"]["customers_canvas"]
    api["properties"].pop("client_secret")
    api["required"] = [key for key in api["required"] if key != "client_secret"]
    storefront = schema["properties"]["storefronts"]["items"]
    storefront["required"] = [key for key in storefront["required"] if key != "upstream"]
    schema["description"] = (
        "The sidecar's configuration file, key for key (cc-sidecar config-reference), minus listen,"
        " admin_listen, secret and customers_canvas.client_secret, which the chart sets."
    )
    return schema


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """Resolve every ``$ref``, drop pydantic's annotations, accept ${VAR} for numbers and booleans."""
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, definitions)
    result = {
        key: (value if key in ("default", "properties") else _inline(value, definitions))
        for key, value in node.items()
        if key not in _DROPPED
    }
    if "properties" in node:
        result["properties"] = {
            name: _inline(value, definitions) for name, value in node["properties"].items()
        }
    if result.get("type") in ("integer", "number", "boolean"):
        own = {key: result.pop(key) for key in list(result) if key not in ("description", "default")}
        result["anyOf"] = [own, ENV_REFERENCE]
    return result


def _closed(properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if description:
        schema["description"] = description
    return schema


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _integer(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "description": description, **extra}


def _boolean(description: str) -> dict[str, Any]:
    return {"type": "boolean", "description": description}


def _object(description: str) -> dict[str, Any]:
    """A Kubernetes object passed through as given (the API server validates it)."""
    return {"type": "object", "description": description}


def _list(description: str) -> dict[str, Any]:
    return {"type": "array", "description": description}


def _port(description: str) -> dict[str, Any]:
    return _integer(description, minimum=1, maximum=65535)


def _chart_config() -> dict[str, Any]:
    """`config` as the chart needs it: shutdown_grace_s a plain number, since the chart computes the
    pod's grace period and the shop's preStop from it (a ${VAR} there cannot be added up)."""
    schema = config_schema()
    grace = schema["properties"]["shutdown_grace_s"]
    (number,) = [branch for branch in grace.pop("anyOf") if branch is not ENV_REFERENCE]
    grace.update(number)
    grace["description"] = grace.get("description", "") + " A number here (the chart adds it up)."
    return schema


def values_schema() -> dict[str, Any]:
    """The whole values.schema.json."""
    probe = _object(
        "Timings of the chart's httpGet probe (periodSeconds, timeoutSeconds, failureThreshold, ...),"
        " or a whole probe with its own handler (httpGet, exec, tcpSocket, grpc), which replaces it."
    )
    labels = {"type": "object", "additionalProperties": {"type": "string"}}
    root = _closed(
        {
            # Helm hands a subchart the parent's `global` values.
            "global": _object("Helm's global values (from a parent chart)."),
            "mode": {"enum": ["standalone", "sidecar"], "description": "standalone or sidecar."},
            "nameOverride": _string("Overrides the chart name part of resource names."),
            "fullnameOverride": _string("Overrides the full resource name prefix."),
            "namespaceOverride": _string("metadata.namespace of every object (default: the release's)."),
            "commonLabels": {**labels, "description": "Labels added to every object and pod."},
            "image": _closed(
                {
                    "repository": _string("Image repository of cc-sidecar.", minLength=1),
                    "tag": _string("Image tag; empty means the chart's appVersion."),
                    "digest": _string(
                        "Image digest: sha256: and 64 lowercase hex digits (or empty).",
                        pattern="^(sha256:[0-9a-f]{64})?$",
                    ),
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                }
            ),
            "imagePullSecrets": _list("Secrets to pull the images with (list of {name: ...})."),
            "replicaCount": _integer("Pods of the Deployment.", minimum=0),
            "upstream": _string("Default upstream of storefronts that set none (standalone mode)."),
            "ports": _closed(
                {
                    "http": _port("Container port of shop traffic."),
                    "admin": _port("Container port of /healthz, /readyz and /metrics."),
                }
            ),
            "listenAddress": _string("Address both listeners bind: 0.0.0.0, or :: for IPv6.", minLength=1),
            "nativeSidecar": _boolean("Run cc-sidecar as a native sidecar (init container, 1.29+)."),
            "config": _chart_config(),
            "secrets": _closed(
                {
                    "existingSecret": _string("Name of an existing Secret with the two keys."),
                    "clientSecretKey": _string("Key of the client secret in the Secret.", minLength=1),
                    "sidecarSecretKey": _string("Key of the sidecar secret in the Secret.", minLength=1),
                    "clientSecret": _string("Client secret, when the chart makes the Secret."),
                    "sidecarSecret": _string(
                        "Sidecar secret (at least 16 characters), when the chart makes the Secret."
                    ),
                    "files": _closed(
                        {
                            "clientSecret": _string("Path of the client secret's file in the container."),
                            "sidecarSecret": _string("Path of the sidecar secret's file in the container."),
                        }
                    ),
                }
            ),
            "tokenStoreSecrets": _closed(
                {
                    "redisPassword": _closed(
                        {
                            "secretName": _string("Secret holding the Redis password (empty: none)."),
                            "key": _string("Key of the password in that Secret.", minLength=1),
                        }
                    ),
                    "sentinelPassword": _closed(
                        {
                            "secretName": _string("Secret holding the sentinels' password (empty: none)."),
                            "key": _string("Key of the password in that Secret.", minLength=1),
                        }
                    ),
                    "caCertificate": _closed(
                        {
                            "secretName": _string("Secret holding the CA certificate of Redis' TLS."),
                            "key": _string("Key of the PEM certificate in that Secret.", minLength=1),
                        }
                    ),
                }
            ),
            "extraEnv": _list("Extra environment variables of the cc-sidecar container."),
            "extraVolumes": _list("Extra volumes of the pod."),
            "extraVolumeMounts": _list("Extra volume mounts of the cc-sidecar container."),
            "extraObjects": _list("Extra manifests rendered with the release."),
            "tmpDir": _closed(
                {
                    "enabled": _boolean("Mount an emptyDir at /tmp of cc-sidecar."),
                    "sizeLimit": {
                        "type": ["string", "integer"],
                        "description": "Its size limit (bytes, or a whole number of k, M, G, T, Ki, Mi, Gi,"
                        " Ti); config.buffering.max_temp_bytes defaults to four fifths of it and must"
                        " stay below it.",
                    },
                }
            ),
            "preStopSleepSeconds": _integer("Seconds of the preStop sleep; 0 disables it.", minimum=0),
            "terminationGracePeriodSeconds": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": "Pod terminationGracePeriodSeconds; null: derived.",
            },
            "resources": _object("Resources of the cc-sidecar container."),
            "runAsUser": _integer("User and group id cc-sidecar runs as.", minimum=1),
            "livenessProbe": probe,
            "readinessProbe": probe,
            "startupProbe": probe,
            "podAnnotations": _object("Extra annotations of the pods."),
            "podLabels": _object("Extra labels of the pods."),
            "nodeSelector": _object("Node selector of the pods."),
            "tolerations": _list("Tolerations of the pods."),
            "affinity": _object("Affinity of the pods."),
            "topologySpreadConstraints": _list("Topology spread constraints of the pods."),
            "defaultTopologySpread": _boolean("Soft spread over nodes and zones without constraints."),
            "priorityClassName": _string("Priority class of the pods."),
            "strategy": _object("Deployment strategy."),
            "revisionHistoryLimit": _integer("Old ReplicaSets kept.", minimum=0),
            "minReadySeconds": _integer("Seconds ready before available.", minimum=0),
            "serviceAccount": _closed(
                {
                    "create": _boolean("Make a ServiceAccount."),
                    "name": _string("Its name, or an existing one's."),
                    "annotations": _object("Its annotations."),
                    "automountToken": _boolean("Mount its API token into the pods."),
                }
            ),
            "service": _closed(
                {
                    "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                    "port": _port("Service port of shop traffic."),
                    "annotations": _object("Extra annotations of the Service."),
                    "externalTrafficPolicy": {"enum": ["Local", "Cluster"]},
                    "loadBalancerSourceRanges": {"type": "array", "items": {"type": "string"}},
                    "ipFamilyPolicy": {"enum": ["", "SingleStack", "PreferDualStack", "RequireDualStack"]},
                }
            ),
            "metrics": _closed(
                {
                    "service": _closed({"enabled": _boolean("Make the metrics Service.")}),
                    "serviceMonitor": _closed(
                        {
                            "enabled": _boolean("Make a ServiceMonitor."),
                            "interval": _string("Scrape interval."),
                            "scrapeTimeout": _string("Scrape timeout."),
                            "labels": _object("Extra labels of the ServiceMonitor."),
                        }
                    ),
                    "prometheusRule": _closed(
                        {
                            "enabled": _boolean("Make a PrometheusRule with the documented alerts."),
                            "for": _string("How long a condition holds before it fires."),
                            "apiFailureRatio": {"type": "number", "minimum": 0, "maximum": 1},
                            "errorRatio": {"type": "number", "minimum": 0, "maximum": 1},
                            "scope": {"enum": ["namespace", "cluster"]},
                            "labels": _object("Extra labels of the PrometheusRule."),
                            "extraRules": _list("More rules for the group."),
                        }
                    ),
                    "dashboard": _closed(
                        {
                            "enabled": _boolean("Make a Grafana dashboard ConfigMap."),
                            "label": _string("The label Grafana's dashboard sidecar watches.", minLength=1),
                            "labelValue": _string("Its value."),
                            "namespace": _string("Namespace of the ConfigMap (empty: the release's)."),
                            "annotations": _object("Annotations of the ConfigMap."),
                        }
                    ),
                    "podMonitor": _closed(
                        {
                            "enabled": _boolean("Make a PodMonitor."),
                            "interval": _string("Scrape interval."),
                            "scrapeTimeout": _string("Scrape timeout."),
                            "labels": _object("Extra labels of the PodMonitor."),
                            "podSelector": _object("Labels of the pods to scrape."),
                        }
                    ),
                }
            ),
            "networkPolicy": _closed(
                {
                    "enabled": _boolean("Make a NetworkPolicy."),
                    "ingressNamespaceSelector": _object("Namespace labels of the ingress controller."),
                    "ingressPodSelector": _object("Pod labels of the ingress controller."),
                    "metricsNamespaceSelector": _object("Namespace labels of Prometheus."),
                    "allowApiEgress": _boolean("Egress to port 443 (the Customer's Canvas API)."),
                    "redisNamespaceSelector": _object("Namespace labels of Redis (empty: no egress)."),
                    "extraIngress": _list("Extra ingress rules."),
                    "extraEgress": _list("Extra egress rules."),
                }
            ),
            "podDisruptionBudget": _closed(
                {
                    "enabled": _boolean("Make a PodDisruptionBudget."),
                    "minAvailable": {
                        "type": ["integer", "string", "null"],
                        "description": "Pods that must stay up (fewer than the pods).",
                    },
                    "maxUnavailable": {
                        "type": ["integer", "string", "null"],
                        "description": "Pods that may be down at once.",
                    },
                }
            ),
            "autoscaling": _closed(
                {
                    "enabled": _boolean("Make a HorizontalPodAutoscaler."),
                    "minReplicas": _integer("Fewest pods.", minimum=1),
                    "maxReplicas": _integer("Most pods.", minimum=1),
                    "targetCPUUtilizationPercentage": _integer("CPU utilisation to aim for.", minimum=1),
                    "metric": {"enum": ["auto", "Resource", "ContainerResource"]},
                    "behavior": _object("HPA scaling behavior."),
                }
            ),
            "shop": _closed(
                {
                    "enabled": _boolean("Deploy the shop Deployment and Service (sidecar mode)."),
                    "image": _closed(
                        {
                            "repository": _string("Shop image.", minLength=1),
                            "tag": {"type": ["string", "number"], "description": "Shop image tag."},
                            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                        }
                    ),
                    "port": _port("Port the shop listens on, on 127.0.0.1."),
                    "command": _list("Command of the shop container."),
                    "args": _list("Args of the shop container."),
                    "env": _list("Environment of the shop container."),
                    "resources": _object("Resources of the shop container."),
                    "lifecycle": _object("lifecycle of the shop container (empty: the chart's preStop)."),
                    "volumeMounts": _list("Extra volume mounts of the shop container."),
                    "volumes": _list("Extra volumes of the pod."),
                    "securityContext": _object("securityContext of the shop container."),
                    "livenessProbe": _object("Liveness probe of the shop container."),
                    "readinessProbe": _object("Readiness probe of the shop container."),
                    "startupProbe": _object("Startup probe of the shop container."),
                    "extraContainers": _list("More containers of the shop (e.g. php-fpm beside nginx)."),
                    "podSecurityContext": _object("Pod-level securityContext in sidecar mode."),
                    "demoNginx": _boolean("Serve the small demo shop from nginx."),
                }
            ),
        }
    )
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "cc-sidecar chart values",
        "description": "Generated by tools/values_schema.py (make chart-schema); do not edit.",
        **root,
    }


def rendered() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = rendered()
    if argv == ["--check"]:
        if SCHEMA_PATH.read_text(encoding="utf-8") != text:
            print(f"{SCHEMA_PATH.relative_to(ROOT)} is stale: run make chart-schema", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
