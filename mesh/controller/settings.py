"""The controller's settings, in one typed object read from flags and MESH_CONTROLLER_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh.env_settings import from_env
from mesh.naming import namespaced_id

VMODEL_IDS = ("namespaced", "name")


@dataclass(frozen=True)
class ControllerSettings:
    """Everything the controller can be told; env var MESH_CONTROLLER_<FIELD> overrides the default."""

    mesh_address: str = "mesh.mesh-system:8033"
    """The routers' gRPC address: the management API (mmesh.ModelMesh, meshadmin.MeshAdmin) models are
    registered with."""
    kv: str = "etcd://mesh-etcd.mesh-system:2379"
    """The store the routers share, given to every runtime pod (its adapter publishes itself there, its router
    sidecar reads placement there)."""
    kv_prefix: str = "mesh"
    """The routers' MESH_KV_PREFIX, given to the runtime pods too."""
    image: str = ""
    """The image the adapter and router containers of runtime pods run; empty: the controller's own (read from its
    pod, named by POD_NAMESPACE and POD_NAME)."""
    image_pull_policy: str = "IfNotPresent"
    watch_namespace: str = ""
    """Only InferenceServices and ServingRuntimes of this namespace (empty: every namespace)."""
    scale_to_zero: bool = True
    """Remove a runtime's Deployment and Service when no InferenceService uses it; false keeps them running once
    created (no pod start on the next first model, idle pods meanwhile)."""
    scale_to_zero_grace_seconds: float = 300.0
    """How long a runtime's Deployment and Service outlive the last InferenceService using it: a model deleted and
    created again (a redeploy) finds its runtime pods still running. Counted by the leading controller from when it
    first saw the runtime unused."""
    handoff_grace_seconds: float = 30.0
    """A runtime pod told to stop keeps serving this long at most while its recently used models load on other
    pods (its adapter's --handoff-grace-s); its model server waits for the adapter to leave routing (a preStop
    hook), and the pod's termination grace covers both."""
    isolate_runtimes: bool = True
    """A model loads only on the instances of the runtime the controller assigned it, in its namespace (required
    label `rt:<namespace>/<runtime>`, reported by those instances' adapters, or added by the router that publishes a
    runtime serving the SPI itself); off, on any instance of its format, as in ModelMesh."""
    vmodel_ids: str = "namespaced"
    """How an InferenceService's vmodel is named: `namespaced`, `<name>.<namespace>` (two namespaces may each have
    a `fraud`; the runtime pods' routers, told their namespace, also answer the bare name); `name`, the bare name
    (unique across the namespaces, as ModelMesh's single-namespace meshes had it)."""
    default_replicas: int = 1
    """Runtime pods per runtime, when its ServingRuntime does not say (spec.replicas)."""
    gpu_memory_bytes: int = 16 * 1024**3
    """Memory per GPU of runtime pods that ask for `nvidia.com/gpu`: the device memory their adapter reports, so
    that models needing GPU memory are placed by it."""
    default_capacity_bytes: int = 1024 * 1024 * 1024
    """Model memory a runtime pod offers when its model server container states no memory request or limit."""
    storage_secret: str = "storage-config"
    """KServe's storage-config secret (one key per storage), mounted read-only into adapters when it exists in the
    runtime's namespace."""
    leader_election: bool = True
    """Run as one of several replicas: only the holder of the Lease `mesh-controller` reconciles (leader.py)."""
    leader_election_namespace: str = ""
    """Where the Lease is: empty, the controller pod's namespace (POD_NAMESPACE), else mesh-system."""
    lease_seconds: float = 15.0
    """A leader that stops renewing is replaced after this long (it stops acting itself after two thirds of it)."""
    resync_seconds: float = 60.0
    """A full reconciliation at least this often, besides the ones events trigger."""
    poll_seconds: float = 2.0
    """How soon to look again while a model is loading or waiting for its runtime."""
    debounce_seconds: float = 0.2
    """Events arriving within this time of each other trigger one reconciliation."""
    watch_timeout_seconds: int = 300
    """How long one watch request lasts before it is renewed from the last resourceVersion."""
    request_timeout_seconds: float = 15.0
    """Deadline of each Kubernetes API and management API call."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> ControllerSettings:
        """Defaults, then MESH_CONTROLLER_* variables, then explicit overrides that are not None."""
        settings = from_env(cls, "MESH_CONTROLLER_", environ, **overrides)
        if settings.vmodel_ids not in VMODEL_IDS:
            raise ValueError(f"vmodel_ids must be one of {', '.join(VMODEL_IDS)}, not {settings.vmodel_ids!r}")
        return settings

    def vmodel_id(self, namespace: str, name: str) -> str:
        """The vmodel id of the InferenceService `name` in `namespace`."""
        return namespaced_id(name, namespace) if self.vmodel_ids == "namespaced" else name
