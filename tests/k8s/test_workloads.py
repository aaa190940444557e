"""The Deployment and Service built for a runtime: valid Kubernetes objects, sized from the runtime's spec, with
the adapter started as the runtime says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mesh.controller.resources import CLUSTER_SERVING_RUNTIME, SERVING_RUNTIME, parse_runtime
from mesh.controller.settings import ControllerSettings
from mesh.controller.workloads import (
    ADAPTER_COMMAND,
    SPEC_HASH,
    WorkloadError,
    build,
    capacity_bytes,
    quantity_bytes,
    workload_name,
)

SETTINGS = ControllerSettings(kv="etcd://etcd.mesh-system:2379", image="mesh:1")
K8S_VERSION = "1.32"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def runtime(annotations: dict[str, str] | None = None, kind: str = CLUSTER_SERVING_RUNTIME, **spec: Any) -> Any:
    body = {
        "metadata": {"name": "triton-2.x", "uid": "u-1", "annotations": annotations or {}},
        "spec": {
            "multiModel": True,
            "grpcDataEndpoint": "port:8001",
            "containers": [{"name": "triton", "image": "tritonserver", "resources": {"requests": {"memory": "1Gi"}}}],
            "builtInAdapter": {
                "serverType": "triton",
                "runtimeManagementPort": 8000,
                "memBufferBytes": 134217728,
                "modelLoadingTimeoutMillis": 90000,
            },
            **spec,
        },
    }
    return parse_runtime(body, kind)


def container(workload: Any, name: str) -> dict[str, Any]:
    return next(c for c in workload.deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_objects_are_valid_kubernetes_and_carry_their_hash() -> None:
    workload = build(runtime(), "team-a", SETTINGS)
    for obj in (workload.deployment, workload.service):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"]["namespace"] == "team-a" and obj["metadata"]["annotations"][SPEC_HASH]
    assert build(runtime(), "team-a", SETTINGS) == workload  # the same spec, the same objects
    assert (
        build(runtime(replicas=2), "team-a", SETTINGS).deployment["metadata"]["annotations"][SPEC_HASH]
        != (workload.deployment["metadata"]["annotations"][SPEC_HASH])
    )


def test_the_adapter_gets_the_default_command_and_the_controllers_flags() -> None:
    workload = build(runtime(), "team-a", SETTINGS)
    adapter = container(workload, "mesh-adapter")
    assert adapter["command"] == [
        "python",
        "-P",
        "-m",
        "adapters.triton",
        "--triton-http",
        "http://127.0.0.1:8000",
        "--triton-grpc",
        "127.0.0.1:8001",
        "--model-repository",
        "/models/_triton_models",
        "--models-dir",
        "/models/_pulled",
        "--advertise-data",
        "$(POD_IP):8001",
    ]
    args = adapter["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--kv"] == "etcd://etcd.mesh-system:2379"
    assert flags["--advertise"] == "$(POD_IP):8085" and flags["--host"] == "0.0.0.0"
    assert flags["--capacity-bytes"] == str(2**30 - 134217728) and flags["--load-timeout-ms"] == "90000"
    mounts = {
        m["mountPath"]
        for c in workload.deployment["spec"]["template"]["spec"]["containers"][:2]
        for m in c["volumeMounts"]
    }
    assert "/models" in mounts


def test_the_shipped_kserve_runtime_gets_the_kserve_adapter_beside_its_host() -> None:
    [doc] = yaml.safe_load_all((DEPLOY / "runtimes" / "kserve-custom.yaml").read_text())
    workload = build(parse_runtime(doc, CLUSTER_SERVING_RUNTIME), "team-a", SETTINGS)
    adapter = container(workload, "mesh-adapter")["command"]
    assert adapter[3:10] == [
        "adapters.kserve", "--kserve-http", "http://127.0.0.1:8080", "--kserve-grpc", "127.0.0.1:8081",
        "--model-repository", "/models/_kserve_models",
    ]  # fmt: skip
    assert adapter[adapter.index("--advertise-data") + 1] == "$(POD_IP):8081"
    host = container(workload, "kserve")["args"]
    # The host's repository is the adapter's; its gRPC port, where routers send inference, is the data endpoint.
    assert host[host.index("--repository") + 1] == "/models/_kserve_models"
    assert host[host.index("--grpc-port") + 1] == "8081" and host[host.index("--grpc-host") + 1] == "0.0.0.0"


def test_the_runtimes_adapter_command_annotation_comes_first() -> None:
    command = "python -m adapters.triton --port 8085 --max-loading-concurrency 2 --advertise-data $(POD_IP):8001"
    adapter = container(
        build(runtime({ADAPTER_COMMAND: command, "maxLoadingConcurrency": "2"}), "ns", SETTINGS), "mesh-adapter"
    )
    assert adapter["command"] == command.split()
    assert adapter["args"][-2:] == ["--max-loading-concurrency", "2"]


def test_a_runtime_without_builtin_adapter_is_published_by_its_router() -> None:
    custom = runtime(builtInAdapter=None, grpcEndpoint="port:9000", kind=SERVING_RUNTIME)
    workload = build(custom, "ns", SETTINGS)
    names = [c["name"] for c in workload.deployment["spec"]["template"]["spec"]["containers"]]
    assert names == ["triton", "mesh-router"]
    args = container(workload, "mesh-router")["args"]
    assert args[args.index("--runtime-endpoint") + 1] == "$(POD_NAME)=$(POD_IP):9000"


def test_an_unknown_server_type_without_a_command_is_refused() -> None:
    with pytest.raises(WorkloadError, match="ovms"):
        build(runtime(builtInAdapter={"serverType": "ovms"}), "ns", SETTINGS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1Gi", 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), ("1.5Gi", int(1.5 * 2**30)), ("1e9", 10**9), ("x", None)],
)
def test_memory_quantities(text: str, expected: int | None) -> None:
    assert quantity_bytes(text) == expected


def test_capacity_is_memory_less_the_buffer_or_the_default() -> None:
    assert capacity_bytes(runtime(containers=[{"name": "c"}]), SETTINGS) == SETTINGS.default_capacity_bytes
    limited = [{"name": "c", "resources": {"limits": {"memory": "2Gi"}}}]
    assert capacity_bytes(runtime(containers=limited), SETTINGS) == 2 * 2**30 - 134217728
    with pytest.raises(WorkloadError):
        capacity_bytes(runtime(containers=[{"name": "c", "resources": {"requests": {"memory": "64Mi"}}}]), SETTINGS)


def test_names_are_dns_labels_and_distinct() -> None:
    names = {workload_name(n) for n in ("triton-2.x", "triton-2-x", "Triton", "a" * 80, "mlserver")}
    assert len(names) == 5
    assert "mesh-runtime-mlserver" in names
    for name in names:
        assert len(name) <= 63 and name.replace("-", "").isalnum() and name == name.lower()


def test_a_pod_told_to_stop_hands_its_models_over_before_its_model_server_stops() -> None:
    settings = ControllerSettings(kv="etcd://etcd.mesh-system:2379", image="mesh:1", handoff_grace_seconds=45)
    workload = build(runtime(), "team-a", settings)
    kubernetes_validate.validate(workload.deployment, K8S_VERSION, strict=True)
    pod = workload.deployment["spec"]["template"]["spec"]
    adapter_args = container(workload, "mesh-adapter")["args"]
    marker = adapter_args[adapter_args.index("--left-marker") + 1]
    assert adapter_args[adapter_args.index("--handoff-grace-s") + 1] == "45"
    assert marker == "/models/.mesh-left"
    # The model server's preStop waits for the adapter's marker (bounded), on the volume both mount.
    hook = container(workload, "triton")["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["/bin/sh", "-c"] and f"[ ! -e {marker} ]" in hook[2] and "-lt 55 ]" in hook[2]
    assert {"name": "models-dir", "mountPath": "/models"} in container(workload, "triton")["volumeMounts"]
    assert pod["terminationGracePeriodSeconds"] == 75  # the hand-off, the quiet wait, the servers' own stops
    # A runtime's own preStop hook is kept; a runtime without an adapter has no marker to wait for.
    own = {"preStop": {"httpGet": {"path": "/drain", "port": 8000}}}
    containers = [{"name": "triton", "image": "tritonserver", "lifecycle": own}]
    assert container(build(runtime(containers=containers), "team-a", settings), "triton")["lifecycle"] == own
    custom = build(runtime(builtInAdapter=None, grpcEndpoint="port:9000", kind=SERVING_RUNTIME), "ns", settings)
    assert "lifecycle" not in container(custom, "triton")


def test_gpus_a_runtime_asks_for_become_device_memory_its_adapter_reports() -> None:
    settings = ControllerSettings(kv="etcd://etcd.mesh-system:2379", image="mesh:1", gpu_memory_bytes=24 * 1024**3)
    resources = {"requests": {"memory": "8Gi"}, "limits": {"memory": "8Gi", "nvidia.com/gpu": "2"}}
    containers = [{"name": "triton", "image": "tritonserver", "resources": resources}]
    args = container(build(runtime(containers=containers), "team-a", settings), "mesh-adapter")["args"]
    assert args[args.index("--device-capacity-bytes") + 1] == f"{24 * 1024**3},{24 * 1024**3}"
    assert "--device-capacity-bytes" not in container(build(runtime(), "team-a", settings), "mesh-adapter")["args"]
    bad = [{"name": "triton", "image": "t", "resources": {"limits": {"nvidia.com/gpu": "two"}}}]
    with pytest.raises(WorkloadError, match="nvidia.com/gpu must be a whole number, not 'two'"):
        build(runtime(containers=bad), "team-a", settings)


def test_the_claims_models_are_on_are_mounted_read_only_where_their_paths_point() -> None:
    workload = build(runtime(), "team-a", SETTINGS, claims=("team-models", "shared.models"))
    kubernetes_validate.validate(workload.deployment, K8S_VERSION, strict=True)
    pod = workload.deployment["spec"]["template"]["spec"]
    volumes = {
        v["persistentVolumeClaim"]["claimName"]: v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert set(volumes) == {"team-models", "shared.models"}
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    for name in ("triton", "mesh-adapter"):
        mounts = {m["mountPath"]: m for m in container(workload, name)["volumeMounts"]}
        assert mounts["/mnt/pvc/team-models"]["name"] == volumes["team-models"]
        assert mounts["/mnt/pvc/shared.models"]["readOnly"]
    args = container(workload, "mesh-adapter")["args"]
    assert args[args.index("--local-root") + 1] == "/mnt/pvc"  # the puller may read there
    assert "volumeMounts" not in container(workload, "mesh-router")
    assert "--local-root" not in container(build(runtime(), "team-a", SETTINGS), "mesh-adapter")["args"]
