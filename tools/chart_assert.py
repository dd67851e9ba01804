"""Assertions on `helm template` output, run by tools/chart-check.sh with the project venv's Python.

    chart_assert.py check RENDERED.yaml [--containers shop,cc-sidecar]
        Every pod that runs cc-sidecar: probes on the admin port, the hardened securityContext, both
        secrets from secretKeyRef, the config volume from a rendered ConfigMap (or a Secret-less
        external one), checksum annotations, a termination grace longer than shutdown_grace_s plus
        the preStop sleep; every other container of the pod (the shop) has a preStop that outlasts
        cc-sidecar's preStop and drain; every Service port lands on a cc-sidecar container port,
        resolved as Kubernetes resolves it (a named targetPort goes to the first container that has
        the name); a ServiceMonitor selects a Service that has its port. Each rendered sidecar.yaml
        passes `cc-sidecar check-config` with the environment the container would have.
    chart_assert.py checksum-differs A.yaml B.yaml
        The pod's checksum/config annotation differs between two renderings.
    chart_assert.py shop RENDERED.yaml --security-context JSON|hardened --probes NAMES
        The shop container of a sidecar-mode pod: its securityContext is exactly the JSON given
        (or cc-sidecar's hardened one), the pod forces no runAsNonRoot or runAsUser on it (unless
        hardened), and it has exactly the probes named (comma-separated; empty: none).

Exits 1 with one line per failed assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CC_SIDECAR = ROOT / ".venv" / "bin" / "cc-sidecar"
CONTAINER = "cc-sidecar"
HARDENED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Stand-ins for the Secret's values when check-config runs on a rendered file.
SECRET_ENV = {"CC_CLIENT_SECRET": "chart-check-client", "CC_SIDECAR_SECRET": "chart-check-sidecar-secret"}


def load(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def sidecar_of(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The cc-sidecar container of a pod spec: a regular one, or a native sidecar (init container)."""
    for container in spec["containers"] + spec.get("initContainers", []):
        if container["name"] == CONTAINER:
            return container
    return None


def target_container(spec: dict[str, Any], target: int | str) -> str | None:
    """The container a Service's targetPort reaches in this pod, as the endpoints controller finds it:
    a number is the port itself (the container that declares it); a name is the first container of
    `containers` with a port of that name (native sidecars' names resolve only from 1.32: not here)."""
    for container in spec["containers"] + spec.get("initContainers", []):
        for port in container.get("ports", []):
            if port["containerPort"] == target:
                return str(container["name"])
    for container in spec["containers"]:
        for port in container.get("ports", []):
            if port.get("name") == target:
                return str(container["name"])
    return None


def _selected(selector: dict[str, str], workloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        w
        for w in workloads
        if selector and selector.items() <= (w["spec"]["template"]["metadata"].get("labels") or {}).items()
    ]


def check_services(path: str, docs: list[dict[str, Any]]) -> list[str]:
    """Every port of every Service that selects a pod lands on that pod's cc-sidecar container."""
    problems = []
    workloads = pods(docs)
    for service in (doc for doc in docs if doc["kind"] == "Service"):
        chosen = _selected(service["spec"].get("selector") or {}, workloads)
        if not chosen:
            problems.append(f"{path}: Service/{service['metadata']['name']} selects no rendered pod")
        for workload in chosen:
            spec = workload["spec"]["template"]["spec"]
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                reached = target_container(spec, target)
                if reached != CONTAINER:
                    problems.append(
                        f"{path}: Service/{service['metadata']['name']} port {port.get('name')} "
                        f"(targetPort {target!r}) reaches container {reached!r} of "
                        f"{workload['kind']}/{workload['metadata']['name']}, not {CONTAINER}"
                    )
    return problems


def _prestop_sleep(container: dict[str, Any]) -> float:
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = (pre_stop.get("exec") or {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def check(path: str, containers: list[str] | None) -> list[str]:
    docs = load(path)
    problems: list[str] = []
    configmaps = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ConfigMap"}
    workloads = pods(docs)
    if containers is not None and not workloads:
        problems.append(f"{path}: no workload rendered")
    for workload in workloads:
        name = f"{path}: {workload['kind']}/{workload['metadata']['name']}"
        template = workload["spec"]["template"]
        spec = template["spec"]
        names = [c["name"] for c in spec["containers"]]
        if containers is not None and names != containers:
            problems.append(f"{name}: containers {names}, expected {containers}")
        sidecar = sidecar_of(spec)
        if sidecar is None:
            continue
        if sidecar not in spec["containers"] and sidecar.get("restartPolicy") != "Always":
            problems.append(f"{name}: cc-sidecar is an init container without restartPolicy Always")
        annotations = template["metadata"].get("annotations") or {}
        for key in ("checksum/config", "checksum/secret"):
            if key not in annotations:
                problems.append(f"{name}: pod annotation {key} missing")
        ports = {p["name"]: p["containerPort"] for p in sidecar.get("ports", [])}
        if set(ports) != {"cc-http", "cc-admin"}:
            problems.append(f"{name}: cc-sidecar's ports are named {sorted(ports)}, not cc-http, cc-admin")
        probes = [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
        if sidecar not in spec["containers"]:
            probes.append(("startupProbe", "/readyz"))
        for probe, url in probes:
            get = (sidecar.get(probe) or {}).get("httpGet") or {}
            if get.get("path") != url or get.get("port") != ports.get("cc-admin"):
                problems.append(f"{name}: {probe} is not GET {url} on the admin port's number")
        context = sidecar.get("securityContext") or {}
        for key, want in HARDENED.items():
            if context.get(key) != want:
                problems.append(f"{name}: securityContext.{key} is {context.get(key)!r}, want {want!r}")
        if not isinstance(context.get("runAsUser"), int) or context["runAsUser"] == 0:
            problems.append(f"{name}: securityContext.runAsUser must be a non-zero uid")
        env = {e["name"]: e for e in sidecar.get("env", [])}
        # secrets.files: the container's shell reads both secrets from files (no env, no Secret).
        from_files = sidecar.get("command", [])[:2] == ["/bin/sh", "-ec"]
        for secret in () if from_files else SECRET_ENV:
            if "secretKeyRef" not in (env.get(secret, {}).get("valueFrom") or {}):
                problems.append(f"{name}: env {secret} does not come from a secretKeyRef")
        for item in env.values():
            if item["name"] in SECRET_ENV and "value" in item:
                problems.append(f"{name}: env {item['name']} has an inline value")
        problems += _check_grace(name, spec, sidecar, configmaps)
        problems += _check_config(name, spec, sidecar, env, configmaps)
    problems += check_services(path, docs)
    problems += _check_service_monitors(path, docs)
    return problems


def _config_of(spec: dict[str, Any], sidecar: dict[str, Any], configmaps: dict[str, Any]) -> str | None:
    mount = next((m for m in sidecar.get("volumeMounts", []) if m["mountPath"] == "/etc/cc-sidecar"), None)
    if mount is None:
        return None
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    configmap = configmaps.get(volume["configMap"]["name"])
    return None if configmap is None else str(configmap["data"]["sidecar.yaml"])


def _check_grace(
    name: str, spec: dict[str, Any], sidecar: dict[str, Any], configmaps: dict[str, Any]
) -> list[str]:
    text = _config_of(spec, sidecar, configmaps)
    grace = float((yaml.safe_load(text) or {}).get("shutdown_grace_s", 20)) if text else 20.0
    sleep = _prestop_sleep(sidecar)
    period = spec.get("terminationGracePeriodSeconds", 30)
    problems = []
    if not period > grace + sleep:
        problems.append(
            f"{name}: terminationGracePeriodSeconds {period} <= shutdown_grace_s {grace} + preStop {sleep}"
        )
    # The shop's containers get SIGTERM with cc-sidecar's: they must stay up while it takes traffic
    # (its preStop) and drains (shutdown_grace_s).
    for container in spec["containers"]:
        if container is not sidecar and _prestop_sleep(container) < grace + sleep:
            problems.append(
                f"{name}: container {container['name']} stops before cc-sidecar has drained "
                f"(preStop sleep {_prestop_sleep(container)} < {grace + sleep})"
            )
    return problems


def _check_config(
    name: str,
    spec: dict[str, Any],
    sidecar: dict[str, Any],
    env: dict[str, dict[str, Any]],
    configmaps: dict[str, Any],
) -> list[str]:
    text = _config_of(spec, sidecar, configmaps)
    if text is None:
        return [f"{name}: no rendered ConfigMap mounted at /etc/cc-sidecar"]
    with tempfile.TemporaryDirectory() as mounts:
        # Files the pod gets from Secret volumes (the Redis CA) exist here as stand-ins.
        text = _with_secret_mounts(text, spec, sidecar, Path(mounts))
        return _check_config_text(name, text, env)


def _with_secret_mounts(text: str, spec: dict[str, Any], sidecar: dict[str, Any], root: Path) -> str:
    """``text`` with each Secret volume's mount path replaced by a directory holding its items."""
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for mount in sidecar.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        directory = root / mount["name"]
        directory.mkdir()
        for item in secret.get("items", []):
            (directory / item["path"]).write_text("stand-in for a Secret's file\n")
        text = text.replace(mount["mountPath"], str(directory))
    return text


def _check_config_text(name: str, text: str, env: dict[str, dict[str, Any]]) -> list[str]:
    if "${CC_CLIENT_SECRET}" not in text or "${CC_SIDECAR_SECRET}" not in text:
        return [f"{name}: the config does not take both secrets from the environment"]
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **SECRET_ENV}
    # Any other variable from a Secret (the token store's passwords) gets a stand-in too.
    environ.update(
        {k: "chart-check-secret" for k, v in env.items() if "secretKeyRef" in (v.get("valueFrom") or {})}
        | SECRET_ENV
    )
    environ.update({k: str(v["value"]) for k, v in env.items() if "value" in v})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(text)
    try:
        result = subprocess.run(  # noqa: S603 (our own venv's command on a file we just wrote)
            [str(CC_SIDECAR), "check-config", "--config", handle.name],
            env=environ,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(handle.name)
    print(f"{name}: check-config: {result.stdout.strip() or result.stderr.strip()}")
    if result.returncode != 0:
        return [f"{name}: rendered sidecar.yaml fails check-config: {result.stderr.strip()}"]
    return []


def _check_service_monitors(path: str, docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    services = [doc for doc in docs if doc["kind"] == "Service"]
    for monitor in (doc for doc in docs if doc["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services if selector.items() <= (s["metadata"].get("labels") or {}).items()]
        ports = {p["name"] for s in chosen for p in s["spec"]["ports"]}
        if len(chosen) != 1:
            problems.append(f"{path}: ServiceMonitor selects {len(chosen)} Services, expected 1")
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] not in ports or endpoint.get("path") != "/metrics":
                problems.append(f"{path}: ServiceMonitor endpoint {endpoint} matches no admin port")
    return problems


def checksum(path: str) -> str:
    (workload,) = pods(load(path))
    return str(workload["spec"]["template"]["metadata"]["annotations"]["checksum/config"])


def check_shop(path: str, security_context: str, probes: list[str]) -> list[str]:
    problems: list[str] = []
    for workload in pods(load(path)):
        name = f"{path}: {workload['kind']}/{workload['metadata']['name']}"
        spec = workload["spec"]["template"]["spec"]
        shop = next((c for c in spec["containers"] if c["name"] == "shop"), None)
        if shop is None:
            problems.append(f"{name}: no shop container")
            continue
        context = shop.get("securityContext")
        if security_context == "hardened":
            if any((context or {}).get(key) != want for key, want in HARDENED.items()):
                problems.append(f"{name}: shop securityContext {context!r} is not the hardened one")
        else:
            if context != json.loads(security_context):
                problems.append(f"{name}: shop securityContext {context!r}, want {security_context}")
            pod_context = spec.get("securityContext") or {}
            for key in ("runAsNonRoot", "runAsUser", "runAsGroup"):
                if key in pod_context:
                    problems.append(f"{name}: pod securityContext.{key} is forced on the shop")
        found = [probe for probe in ("livenessProbe", "readinessProbe", "startupProbe") if probe in shop]
        if sorted(found) != sorted(probes):
            problems.append(f"{name}: shop probes {found}, want {probes}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check")
    check_parser.add_argument("rendered")
    check_parser.add_argument("--containers", help="comma-separated container names, in order")
    differs = commands.add_parser("checksum-differs")
    differs.add_argument("a")
    differs.add_argument("b")
    shop = commands.add_parser("shop")
    shop.add_argument("rendered")
    shop.add_argument("--security-context", required=True)
    shop.add_argument("--probes", default="")
    args = parser.parse_args()
    if args.command == "check":
        containers = args.containers.split(",") if args.containers else None
        problems = check(args.rendered, containers)
    elif args.command == "shop":
        problems = check_shop(args.rendered, args.security_context, [p for p in args.probes.split(",") if p])
    else:
        before, after = checksum(args.a), checksum(args.b)
        problems = [] if before != after else [f"checksum/config unchanged ({before}) after a config change"]
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
