"""Every manifest in deploy/ validates offline: built-in kinds against Kubernetes' own schemas
(kubernetes-validate, strict), KServe kinds against the CRDs' schemas in deploy/crds (strict); the kustomize
base builds and its output validates the same way; each example InferenceService finds its runtime."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from crd_schema import REPO, custom_kinds, validators

from mesh.controller.registration import model_spec
from mesh.controller.resources import CLUSTER_SERVING_RUNTIME, is_model_mesh, parse_predictor, parse_runtime
from mesh.controller.selection import select_runtime
from mesh.controller.workloads import workload_name
from mesh.engine.haproxy_process import sidecar_command
from mesh.placement.gauges import PlacementGauges

K8S_VERSION = "1.32"
DEPLOY = REPO / "deploy"
CUSTOM = validators()
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def validate(doc: dict[str, Any], where: str) -> None:
    custom = CUSTOM.get((doc.get("apiVersion"), doc.get("kind")))
    if custom is not None:
        try:
            custom(doc)
        except ValueError as exc:
            pytest.fail(f"{where}: {doc['kind']} {doc['metadata'].get('name')}: {exc}")
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{where}: {doc['kind']} {doc['metadata'].get('name')}: {exc.message} at {list(exc.path)}")
    except kubernetes_validate.SchemaNotFoundError:
        pytest.fail(f"{where}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_validates(path: Path) -> None:
    docs = documents(path.read_text())
    assert docs, f"{path} holds no manifest"
    for doc in docs:
        validate(doc, str(path.relative_to(REPO)))


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl to build the kustomize base with (`kubectl kustomize`)")
    built = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "base")], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    return documents(built.stdout)


def test_kustomize_base_builds_and_validates(base: list[dict[str, Any]]) -> None:
    for doc in base:
        validate(doc, "kubectl kustomize deploy/base")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in base}
    assert {("Namespace", "mesh-system"), ("Service", "mesh"), ("StatefulSet", "mesh-etcd")} <= kinds
    assert {("Deployment", "mesh-controller"), ("Deployment", "mesh-router")} <= kinds
    assert {("ClusterRole", "mesh-controller"), ("ConfigMap", "mesh-config")} <= kinds
    runtimes = {name for kind, name in kinds if kind == CLUSTER_SERVING_RUNTIME}
    assert runtimes == {"mlserver-1.x", "triton-2.x", "torchserve-0.x", "kserve-custom-0.x"}
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    cluster_scoped.add(CLUSTER_SERVING_RUNTIME)
    for doc in base:
        assert ("namespace" in doc["metadata"]) == (doc["kind"] not in cluster_scoped), doc["metadata"]["name"]


def test_each_example_finds_its_runtime_among_the_bases(base: list[dict[str, Any]]) -> None:
    runtimes = [parse_runtime(d, CLUSTER_SERVING_RUNTIME) for d in base if d["kind"] == CLUSTER_SERVING_RUNTIME]
    chosen = {}
    for path in sorted((DEPLOY / "examples").glob("*.yaml")):
        for doc in documents(path.read_text()):
            if doc["kind"] != "InferenceService":
                continue
            assert is_model_mesh(doc), path
            doc["metadata"]["namespace"] = "default"
            predictor = parse_predictor(doc)
            model_spec(predictor)  # storage the puller reads
            runtime = select_runtime(predictor, [], runtimes)
            assert not hasattr(runtime, "reason"), f"{path.name}: {runtime}"
            chosen[path.name] = runtime.name  # type: ignore[union-attr]
    assert set(chosen.values()) == {"mlserver-1.x", "triton-2.x", "torchserve-0.x", "kserve-custom-0.x"}, chosen


def test_the_two_runtime_crds_share_one_schema() -> None:
    schemas = {k.kind: k.schema for k in custom_kinds()}
    assert schemas["ServingRuntime"] == schemas["ClusterServingRuntime"]


def test_the_router_pod_runs_the_engine_beside_mesh_on_a_shared_directory() -> None:
    """The engine container runs what mesh's sidecar driver expects (sidecar_command) on the directory the router
    container is told, both mount it, and the Service's ports are the engine's."""
    docs = documents((DEPLOY / "base" / "router.yaml").read_text())
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    router, engine = containers["router"], containers["engine"]
    command = router["command"]
    assert command[command.index("--dataplane") + 1] == "haproxy-sidecar"
    directory = command[command.index("--dataplane-dir") + 1]
    assert engine["command"] == sidecar_command(directory)
    assert engine["image"].startswith("haproxy:")
    volume = next(v["name"] for v in pod["volumes"] if "emptyDir" in v)
    for container in (router, engine):
        assert {"name": volume, "mountPath": directory} in container["volumeMounts"], container["name"]
    service = next(d for d in docs if d["kind"] == "Service")
    engine_ports = {p["name"] for p in engine["ports"]}
    assert {"grpc", "http"} <= engine_ports
    declared = {p["name"] for c in containers.values() for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= declared


def test_the_controller_runs_as_two_replicas_allowed_to_hold_its_lease() -> None:
    controller = documents((DEPLOY / "base" / "controller.yaml").read_text())[0]
    assert controller["spec"]["replicas"] == 2
    env = {e["name"] for e in controller["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"POD_NAME", "POD_NAMESPACE"} <= env  # the candidate's identity and the Lease's namespace
    role = next(d for d in documents((DEPLOY / "base" / "rbac.yaml").read_text()) if d["kind"] == "Role")
    rules = [r for r in role["rules"] if r["apiGroups"] == ["coordination.k8s.io"]]
    assert rules == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]


def test_the_hpa_example_scales_the_runtime_deployment_the_controller_makes_on_the_pressure_gauge() -> None:
    hpa = documents((DEPLOY / "examples" / "hpa-runtime.yaml").read_text())[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == workload_name("mlserver-1.x")
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
    assert metric == "modelmesh_cache_pressure"
    assert metric in {family.name for family in PlacementGauges.families()}
