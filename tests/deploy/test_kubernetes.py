"""deploy/kubernetes: every object is valid against the Kubernetes API schemas (strict: no field
the API does not know), the PodMonitor against the Prometheus Operator's model, and the
manifests say what docs/deploy.md promises: a StatefulSet per consumer group whose workers run
the very command line the compose test runs, probes on /healthz and /readyz, resource
requests, secrets from the Secret, and pipeline files equal to examples/rooms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).parents[2]
BASE = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose" / "rooms" / "compose.yaml"
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes the manifests promise to work with (docs/deploy.md)."""
GROUPS = {"reckoning": 2, "coldstorage": 1}
"""Consumer groups and their worker count, as in the compose stack."""
UNDERSTOOD = {"apiVersion", "kind", "resources"}
"""kustomization.yaml fields this test renders; any other would change what kubectl applies."""


def render() -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/kubernetes` applies (resources only)."""
    kustomization = YAML(typ="safe").load((BASE / "kustomization.yaml").read_text())
    assert set(kustomization) <= UNDERSTOOD, f"render() does not apply {set(kustomization)}"
    objects = []
    for name in kustomization["resources"]:
        objects += [doc for doc in YAML(typ="safe").load_all((BASE / name).read_text()) if doc]
    listed = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(kustomization["resources"]), "a manifest is not in kustomization.yaml"
    return objects


OBJECTS = render()


def find(kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def container(workload: dict[str, Any]) -> dict[str, Any]:
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_object_is_valid_for_the_kubernetes_api(obj: dict[str, Any]) -> None:
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        check_prometheus_operator(obj)
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def check_prometheus_operator(obj: dict[str, Any]) -> None:
    """Validate against the Prometheus Operator's own models (cloudcoil's, generated from its
    CRDs): required fields and types by the model, and no field the model does not know."""
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, obj["kind"]).model_validate(obj)
    understood = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert unknown_fields(obj, understood) == [], "fields the CRD does not define"


def unknown_fields(given: Any, understood: Any, path: str = "") -> list[str]:
    """Paths present in ``given`` but dropped by the model."""
    if isinstance(given, dict):
        if not isinstance(understood, dict):
            return [path]
        return [
            p
            for key, value in given.items()
            for p in (
                unknown_fields(value, understood[key], f"{path}.{key}")
                if key in understood
                else [f"{path}.{key}"]
            )
        ]
    if isinstance(given, list):
        return [
            p
            for i, (a, b) in enumerate(zip(given, understood, strict=True))
            for p in unknown_fields(a, b, f"{path}[{i}]")
        ]
    return []


def test_the_validators_catch_mistakes() -> None:
    """The checks above can fail: a misspelt field and a wrong type are refused."""
    workload = find("StatefulSet", "reckoning")
    broken = {**workload, "spec": {**workload["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    monitor = find("PodMonitor", "tideflow-pipelines")
    endpoint = {**monitor["spec"]["podMetricsEndpoints"][0], "intervall": "15s"}
    typo = {**monitor, "spec": {**monitor["spec"], "podMetricsEndpoints": [endpoint]}}
    with pytest.raises(AssertionError):
        check_prometheus_operator(typo)


def compose_command(service: str) -> list[str]:
    services = YAML(typ="safe").load(COMPOSE.read_text())["services"]
    return [str(arg) for arg in services[service]["command"]]


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_each_consumer_group_is_a_statefulset_of_stable_workers(group: str) -> None:
    workload = find("StatefulSet", group)
    assert workload["spec"]["replicas"] == GROUPS[group]
    assert workload["spec"]["serviceName"] == find("Service", group)["metadata"]["name"]
    main = container(workload)
    args = [str(a) for a in main["args"]]
    # The pod's name (group-0, group-1, ...) is the worker id: the command of the compose
    # stack's containers, whose test runs it, with the id each container is given there.
    for index in range(GROUPS[group]):
        worker = f"{group}-{index}"
        named = [worker if a == "$(POD_NAME)" else a for a in args]
        assert named == compose_command(worker)
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        main["env"]
    )
    # Probes on the endpoints of `--metrics-port`, resource requests, graceful stop.
    port = int(args[args.index("--metrics-port") + 1])
    assert {"name": "metrics", "containerPort": port} in main["ports"]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"cpu", "memory"} <= set(main["resources"]["requests"])
    pod = workload["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user


def test_state_store_and_secrets_come_from_the_secret() -> None:
    secret = find("Secret", "tideflow-secrets")
    env = find("ConfigMap", "tideflow-env")
    assert {"TIDEFLOW_STATE", "DB_URL", "AWS_SECRET_ACCESS_KEY", "TIDEFLOW_TOKEN"} <= set(
        secret["stringData"]
    )
    assert secret["stringData"]["TIDEFLOW_STATE"].startswith("postgresql://")
    assert not set(env["data"]) & set(secret["stringData"]), "a value both secret and not"
    for obj in OBJECTS:
        if obj["kind"] not in ("StatefulSet", "Deployment", "Job"):
            continue
        main = container(obj)
        refs = main["envFrom"]
        assert {"secretRef": {"name": "tideflow-secrets"}} in refs, obj["metadata"]["name"]
        assert {"configMapRef": {"name": "tideflow-env"}} in refs, obj["metadata"]["name"]
        # Nothing secret is written into a workload itself.
        for variable in main.get("env", []):
            assert (
                "value" not in variable
                or "://" not in variable["value"]
                or (variable["name"] == "TIDEFLOW_HEALTH_URL")
            )


def test_pipeline_files_are_the_rooms_example() -> None:
    files = find("ConfigMap", "tideflow-pipelines")["data"]
    for name, text in files.items():
        example = (ROOT / "examples" / "rooms" / name).read_text()
        assert text == example, f"deploy/kubernetes/pipelines.yaml: {name} differs"
    assert set(files) == {"publish.yaml", "coldstorage.yaml", "reckoning.yaml"}


def test_the_podmonitor_scrapes_every_pipeline_pod_and_the_ui_is_served() -> None:
    monitor = find("PodMonitor", "tideflow-pipelines")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    pipelines = [o for o in OBJECTS if o["kind"] in ("StatefulSet", "Job")]
    assert {o["metadata"]["name"] for o in pipelines} == {*GROUPS, "publish"}
    for workload in pipelines:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert wanted.items() <= labels.items(), workload["metadata"]["name"]
        assert port in {p["name"] for p in container(workload)["ports"]}
    ui = find("Deployment", "tideflow-ui")
    assert container(ui)["args"][0] == "serve"
    assert find("Service", "tideflow-ui")["spec"]["selector"].items() <= (
        ui["spec"]["template"]["metadata"]["labels"].items()
    )
