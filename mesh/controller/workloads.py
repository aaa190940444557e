"""The Deployment and Service the controller runs for a serving runtime, built from its spec (pure, no I/O).

A runtime pod holds the runtime's own containers (the model server), mesh's adapter for its `builtInAdapter`
server type, and a mesh router, all sharing an emptyDir at /models (where the adapter's puller writes model files
and the model server reads them). The adapter publishes itself in the routers' store (etcd) under a lease, so
every router finds it; the router beside it serves the pod's Service on 8033 (gRPC) and 8008 (REST).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from dataclasses import dataclass
from typing import Any

from mesh.controller.registration import PVC_ROOT
from mesh.controller.resources import GROUP, RUNTIME_VERSION, Runtime
from mesh.controller.settings import ControllerSettings

MANAGED_BY = "app.kubernetes.io/managed-by"
CONTROLLER = "mesh-controller"
INSTANCE = "app.kubernetes.io/instance"
RUNTIME_LABEL = "mesh.kserve.io/runtime"
RUNTIME_KIND_LABEL = "mesh.kserve.io/runtime-kind"
SPEC_HASH = "mesh.kserve.io/spec-hash"
ADAPTER_COMMAND = "mesh.io/adapter-command"
MAX_LOADING_CONCURRENCY = "maxLoadingConcurrency"
SELECTOR = f"{MANAGED_BY}={CONTROLLER}"
"""The label selector of every object the controller manages."""

MODELS_VOLUME, MODELS_DIR = "models-dir", "/models"
LEFT_MARKER = f"{MODELS_DIR}/.mesh-left"
GPU_RESOURCE = "nvidia.com/gpu"
"""Written by the adapter once it has left routing (--left-marker): the model server's preStop hook waits for it."""
QUIET_MARGIN_S = 10.0
"""Beyond the hand-off grace: the adapter's wait for calls to stop coming (5 s at most), and some slack."""
STOP_MARGIN_S = 30.0
"""The pod's termination grace beyond the hand-off: the quiet wait, the servers' own graceful stops."""
STORAGE_VOLUME, STORAGE_DIR = "storage-config", "/storage-config"
ADAPTER_PORT = 8085
GRPC_PORT, REST_PORT, METRICS_PORT = 8033, 8008, 2112
DEFAULT_MEM_BUFFER_BYTES = 128 * 1024 * 1024
NAME_PREFIX = "mesh-runtime-"
MAX_NAME = 63  # a Service name is a DNS-1035 label


@dataclass(frozen=True)
class ServerType:
    """How mesh's adapter for one model server is started when the runtime's annotation gives no command."""

    module: str
    management_flag: str
    management_port: int
    management_url: bool  # the flag takes http://host:port rather than host:port
    data_flag: str
    data_port: int
    repository_flag: str
    repository: str


SERVER_TYPES = {
    "mlserver": ServerType(
        "adapters.mlserver", "--mlserver-http", 8002, True, "--mlserver-grpc", 8001, "--model-repository",
        f"{MODELS_DIR}/_mlserver_models",
    ),
    "triton": ServerType(
        "adapters.triton", "--triton-http", 8000, True, "--triton-grpc", 8001, "--model-repository",
        f"{MODELS_DIR}/_triton_models",
    ),
    "torchserve": ServerType(
        "adapters.torchserve", "--management-url", 8081, True, "--torchserve-grpc", 7070, "--model-store",
        f"{MODELS_DIR}/_torchserve_models",
    ),
    "kserve": ServerType(
        "adapters.kserve", "--kserve-http", 8080, True, "--kserve-grpc", 8081, "--model-repository",
        f"{MODELS_DIR}/_kserve_models",
    ),
}  # fmt: skip

_POD_ENV = [
    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
]


class WorkloadError(ValueError):
    """A runtime spec the controller cannot run; the message says why."""


@dataclass(frozen=True)
class Workload:
    """The objects one runtime in one namespace needs; each carries the hash of its own content."""

    namespace: str
    name: str
    deployment: dict[str, Any]
    service: dict[str, Any]


def workload_name(runtime_name: str) -> str:
    """`mesh-runtime-<name>` as a DNS-1035 label; a name that had to change gets a hash, so two never meet."""
    clean = re.sub(r"[^a-z0-9-]+", "-", runtime_name.lower()).strip("-")
    name = NAME_PREFIX + clean
    if clean != runtime_name or len(name) > MAX_NAME:
        digest = hashlib.sha256(runtime_name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"
    return name


def spec_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _port(endpoint: object, default: int) -> int:
    """The port of a ServingRuntime endpoint ("port:8085")."""
    if isinstance(endpoint, str) and endpoint.startswith("port:") and endpoint[5:].isdigit():
        return int(endpoint[5:])
    return default


_QUANTITY = re.compile(r"^([0-9.]+(?:[eE][-+]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIXES = {
    None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def quantity_bytes(text: object) -> int | None:
    """A Kubernetes memory quantity ("1Gi", "512M", "1e9") in bytes; None when absent or not a quantity."""
    if isinstance(text, int):
        return text
    match = _QUANTITY.match(str(text).strip()) if isinstance(text, str) else None
    if match is None:
        return None
    return int(float(match.group(1)) * _SUFFIXES[match.group(2)])


def capacity_bytes(runtime: Runtime, settings: ControllerSettings) -> int:
    """Model memory a runtime pod offers: its model server's memory request (else limit) less memBufferBytes."""
    containers = runtime.spec.get("containers") or []
    resources = (containers[0].get("resources") or {}) if containers and isinstance(containers[0], dict) else {}
    memory = quantity_bytes((resources.get("requests") or {}).get("memory")) or quantity_bytes(
        (resources.get("limits") or {}).get("memory")
    )
    if memory is None:
        return settings.default_capacity_bytes
    adapter = runtime.spec.get("builtInAdapter") or {}
    buffer = adapter.get("memBufferBytes", DEFAULT_MEM_BUFFER_BYTES)
    capacity = memory - int(buffer)
    if capacity <= 0:
        raise WorkloadError(f"{runtime.ref}: memory {memory} bytes leaves nothing beside memBufferBytes {buffer}")
    return capacity


def gpus(runtime: Runtime) -> int:
    """The GPUs a runtime pod's containers ask for (`nvidia.com/gpu`, as a limit or a request)."""
    total = 0
    for container in runtime.spec.get("containers") or []:
        resources = (container.get("resources") or {}) if isinstance(container, dict) else {}
        count = (resources.get("limits") or {}).get(GPU_RESOURCE) or (resources.get("requests") or {}).get(GPU_RESOURCE)
        if count is not None:
            try:
                total += int(count)
            except (TypeError, ValueError):
                raise WorkloadError(f"{runtime.ref}: {GPU_RESOURCE} must be a whole number, not {count!r}") from None
    return total


def build(runtime: Runtime, namespace: str, settings: ControllerSettings, claims: tuple[str, ...] = ()) -> Workload:
    """The Deployment and Service for `runtime` in `namespace`, mounting these persistent volume claims (read-only,
    at PVC_ROOT/<claim>) for the models on them; WorkloadError for a spec that cannot run."""
    name = workload_name(runtime.name)
    labels = {
        "app.kubernetes.io/name": "mesh-runtime",
        "app.kubernetes.io/part-of": "mesh",
        MANAGED_BY: CONTROLLER,
        INSTANCE: name,
        RUNTIME_LABEL: runtime.name if len(runtime.name) <= MAX_NAME else name,
        RUNTIME_KIND_LABEL: runtime.kind,
    }
    owner = {
        "apiVersion": f"{GROUP}/{RUNTIME_VERSION}",
        "kind": runtime.kind,
        "name": runtime.name,
        "uid": runtime.uid,
        "blockOwnerDeletion": False,
    }
    metadata = {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": int(runtime.spec.get("replicas", settings.default_replicas)),
            "selector": {"matchLabels": {INSTANCE: name, MANAGED_BY: CONTROLLER}},
            "template": {
                "metadata": {
                    "labels": {**(runtime.spec.get("labels") or {}), **labels},
                    "annotations": dict(runtime.spec.get("annotations") or {}),
                },
                "spec": _pod_spec(runtime, namespace, settings, claims),
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "selector": {INSTANCE: name, MANAGED_BY: CONTROLLER},
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP"},
            ],
        },
    }
    return Workload(namespace, name, _stamped(deployment), _stamped(service))


def _stamped(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` annotated with the hash of its content: the controller replaces it only when that differs."""
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["annotations"] = {SPEC_HASH: spec_hash(obj)}
    return obj


def _pod_spec(
    runtime: Runtime, namespace: str, settings: ControllerSettings, claims: tuple[str, ...]
) -> dict[str, Any]:
    spec = runtime.spec
    containers = [_with_models_volume(c) for c in spec.get("containers") or [] if isinstance(c, dict)]
    if not containers:
        raise WorkloadError(f"{runtime.ref} has no containers")
    spi_port = _port(spec.get("grpcEndpoint"), ADAPTER_PORT)
    if runtime.server_type is not None:
        containers = [_waits_for_the_adapter(c, settings) for c in containers]
        containers.append(_adapter(runtime, spi_port, settings, runtime.instance_labels(namespace)))
    containers = [_with_claims(c, claims) for c in containers]
    containers.append(_router(runtime, spi_port, settings, runtime.instance_labels(namespace)))
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") not in (MODELS_VOLUME, STORAGE_VOLUME)]
    volumes.append({"name": MODELS_VOLUME, "emptyDir": {}})
    for claim in claims:
        volumes.append({"name": _claim_volume(claim), "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    volumes.append({"name": STORAGE_VOLUME, "secret": {"secretName": settings.storage_secret, "optional": True}})
    pod: dict[str, Any] = {
        "containers": containers,
        "volumes": volumes,
        "terminationGracePeriodSeconds": math.ceil(settings.handoff_grace_seconds + STOP_MARGIN_S),
    }
    for key in ("nodeSelector", "affinity", "tolerations", "imagePullSecrets"):
        if spec.get(key):
            pod[key] = spec[key]
    return pod


def _waits_for_the_adapter(container: dict[str, Any], settings: ControllerSettings) -> dict[str, Any]:
    """A model server container that stops only once the adapter has left routing (its hand-off done, or its
    grace over): Kubernetes signals every container of a pod at once, and a model server stopping at once would
    fail the requests the hand-off keeps sending it. A preStop hook the runtime sets itself is kept."""
    if (container.get("lifecycle") or {}).get("preStop"):
        return container
    limit = math.ceil(settings.handoff_grace_seconds + QUIET_MARGIN_S)
    wait = f"i=0; while [ ! -e {LEFT_MARKER} ] && [ $i -lt {limit} ]; do sleep 1; i=$((i+1)); done"
    hook = {"preStop": {"exec": {"command": ["/bin/sh", "-c", wait]}}}
    return {**container, "lifecycle": {**(container.get("lifecycle") or {}), **hook}}


def _claim_volume(claim: str) -> str:
    """A volume name for the claim: a DNS-1123 label (a claim name may be longer, or hold dots)."""
    return "pvc-" + hashlib.sha256(claim.encode()).hexdigest()[:12]


def _with_claims(container: dict[str, Any], claims: tuple[str, ...]) -> dict[str, Any]:
    """The container with each claim mounted read-only at PVC_ROOT/<claim>; the adapter also reads from there."""
    if not claims:
        return container
    mounts = [{"name": _claim_volume(c), "mountPath": f"{PVC_ROOT}/{c}", "readOnly": True} for c in claims]
    changed = {**container, "volumeMounts": [*(container.get("volumeMounts") or []), *mounts]}
    if container.get("name") == "mesh-adapter":
        changed["args"] = [*container["args"], "--local-root", PVC_ROOT]
    return changed


def _with_models_volume(container: dict[str, Any]) -> dict[str, Any]:
    container = json.loads(json.dumps(container))
    mounts = container.setdefault("volumeMounts", [])
    if not any(m.get("name") == MODELS_VOLUME for m in mounts):
        mounts.append({"name": MODELS_VOLUME, "mountPath": MODELS_DIR})
    return container


def _adapter_command(runtime: Runtime) -> list[str]:
    """The adapter's command: the runtime's mesh.io/adapter-command annotation, else its server type's default."""
    annotated = runtime.annotations.get(ADAPTER_COMMAND)
    if annotated:
        return shlex.split(annotated)
    server_type = SERVER_TYPES.get(runtime.server_type or "")
    if server_type is None:
        raise WorkloadError(
            f"{runtime.ref}: builtInAdapter.serverType '{runtime.server_type}' has no mesh adapter (known: "
            f"{', '.join(SERVER_TYPES)}); give its command in the {ADAPTER_COMMAND} annotation"
        )
    adapter = runtime.spec.get("builtInAdapter") or {}
    management = int(adapter.get("runtimeManagementPort") or server_type.management_port)
    data = _port(runtime.spec.get("grpcDataEndpoint"), server_type.data_port)
    management_address = f"http://127.0.0.1:{management}" if server_type.management_url else f"127.0.0.1:{management}"
    return [
        "python", "-P", "-m", server_type.module,  # -P: the working directory never shadows the packages
        server_type.management_flag, management_address,
        server_type.data_flag, f"127.0.0.1:{data}",
        server_type.repository_flag, server_type.repository,
        "--models-dir", f"{MODELS_DIR}/_pulled",
        "--advertise-data", f"$(POD_IP):{data}",
    ]  # fmt: skip


def _adapter(runtime: Runtime, spi_port: int, settings: ControllerSettings, labels: tuple[str, ...]) -> dict[str, Any]:
    adapter = runtime.spec.get("builtInAdapter") or {}
    # Appended after the command, so these win over the same flags in an annotation's command: only the
    # controller knows the store, the pod's address and the memory it was given.
    args = [
        "--host", "0.0.0.0",
        "--port", str(spi_port),
        "--kv", settings.kv,
        "--kv-prefix", settings.kv_prefix,
        "--advertise", f"$(POD_IP):{spi_port}",
        "--instance-id", "$(POD_NAME)",
        "--capacity-bytes", str(capacity_bytes(runtime, settings)),
        "--storage-config-dir", STORAGE_DIR,
        "--labels", ",".join(labels),
        "--handoff-grace-s", str(settings.handoff_grace_seconds),
        "--left-marker", LEFT_MARKER,
    ]  # fmt: skip
    if count := gpus(runtime):  # each GPU's memory, so that placement counts it
        args += ["--device-capacity-bytes", ",".join([str(settings.gpu_memory_bytes)] * count)]
    if adapter.get("modelLoadingTimeoutMillis"):
        args += ["--load-timeout-ms", str(int(adapter["modelLoadingTimeoutMillis"]))]
    concurrency = runtime.annotations.get(MAX_LOADING_CONCURRENCY, "")
    if concurrency.isdigit() and int(concurrency) > 0:
        args += ["--max-loading-concurrency", concurrency]
    extra_env = [e for e in adapter.get("env") or [] if isinstance(e, dict) and e.get("name")]
    return {
        "name": "mesh-adapter",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": _adapter_command(runtime),
        "args": args,
        "env": [*_POD_ENV, *extra_env],
        "ports": [{"name": "spi", "containerPort": spi_port}],
        "readinessProbe": {"tcpSocket": {"port": spi_port}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [
            {"name": MODELS_VOLUME, "mountPath": MODELS_DIR},
            {"name": STORAGE_VOLUME, "mountPath": STORAGE_DIR, "readOnly": True},
        ],
    }


def _namespace_env(settings: ControllerSettings) -> list[dict[str, Any]]:
    """The router answers its namespace's bare InferenceService names (mesh/naming.py) when vmodels are
    namespaced."""
    if settings.vmodel_ids != "namespaced":
        return []
    return [{"name": "MESH_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]


def _router(runtime: Runtime, spi_port: int, settings: ControllerSettings, labels: tuple[str, ...]) -> dict[str, Any]:
    args = ["serve", "--runtimes", "0", "--no-examples", "--host", "0.0.0.0", "--kv", settings.kv]
    args += ["--data-dir", "/tmp/mesh"]
    if runtime.server_type is None:
        # No built-in adapter: the runtime serves the SPI itself, and this router publishes it for all.
        args += ["--runtime-endpoint", f"$(POD_NAME)=$(POD_IP):{spi_port}", "--runtime-labels", ",".join(labels)]
    health = {"path": "/v2/health/ready", "port": "http"}
    return {
        "name": "mesh-router",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["mesh"],
        "args": args,
        "env": [*_POD_ENV, {"name": "MESH_KV_PREFIX", "value": settings.kv_prefix}, *_namespace_env(settings)],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT},
            {"name": "http", "containerPort": REST_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "readinessProbe": {"httpGet": health, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 15},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }
