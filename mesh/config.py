"""Settings for the router, in one typed object read from flags and MESH_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mesh.env_settings import from_env
from mesh.tls import ClientTLS, ServerTLS, client_tls, server_tls

DATAPLANES = ("auto", "haproxy", "haproxy-sidecar", "python")
"""What can serve the public ports (Settings.dataplane)."""


@dataclass(frozen=True)
class Settings:
    """Everything the router can be told; env var MESH_<FIELD> (upper case) overrides the default."""

    host: str = "127.0.0.1"
    """Address both front doors bind; 0.0.0.0 to serve other machines."""
    grpc_port: int = 8033
    """gRPC front door (inference + management API); 0 picks a free port."""
    rest_port: int = 8008
    """REST front door (/v2/...); 0 picks a free port, -1 disables it."""
    data_dir: str = ".mesh"
    """Where the embedded store and the example models live."""
    kv: str = ""
    """Placement state store: memory:// (lost on exit), file://PATH, etcd://HOST:PORT[,HOST:PORT...], or empty
    for DATA_DIR/kv.log."""
    kv_prefix: str = "mesh"
    """Key prefix, so two meshes can share one store."""
    namespace: str = ""
    """The Kubernetes namespace this router serves (a runtime pod's router): a request's bare name `fraud` means
    that namespace's InferenceService `fraud.<namespace>` first (registry/naming.py). Empty: names are exact."""
    instance_lease_seconds: float = 10.0
    """A runtime instance whose record is not refreshed within this time disappears from routing."""
    load_failure_backoff_seconds: float = 30.0
    """A model that failed to load on an instance is not retried there before this has passed."""
    unreachable_retry_seconds: float = 5.0
    """A runtime instance that did not answer gets no loads or requests for this long, then one more try."""
    load_timeout_seconds: float = 90.0
    """Upper bound for one loadModel call when the runtime does not state its own."""
    predict_size_timeout_seconds: float = 0.5
    """predictModelSize must answer almost at once; past this the runtime's default size is used."""
    last_used_flush_seconds: float = 5.0
    """How often recency is written back to the store (batched, never per request)."""
    scale_up_rpm: float = 2000.0
    """Requests per minute per copy, across routers, above which a model gets another copy."""
    scale_up_in_flight: int = 16
    """Requests in flight on a model's least busy copy above which it gets another copy."""
    idle_copy_seconds: float = 300.0
    """A model unused this long keeps one copy (or its min_copies); its extra copies are unloaded."""
    second_copy_after_seconds: float = 420.0
    """A model in use for this long (with no pause longer than second_copy_max_gap_seconds) gets a second copy, so
    that losing one runtime is not a cold load for it (ModelMesh's 7 minutes); 0: no second copies by use."""
    second_copy_max_gap_seconds: float = 2400.0
    """A pause in a model's use longer than this starts its use over (ModelMesh's 40 minutes)."""
    working_set_seconds: float = 600.0
    """The window of the working set the scaling signal weighs (modelmesh_working_set_bytes): models used within
    it are the ones the runtimes should hold."""
    demand_publish_seconds: float = 0.25
    """How often (at most) this router publishes the models it has requests in flight or waiting for, so that no
    router sharing its store evicts their copies; 0: never (a router alone on its store needs none)."""
    eviction_policy: str = "lru"
    """Which copies make room for a load: lru (least recently used, cluster-wide), cost (GDSF weighing each model's
    measured load time: slow-to-load models stay) or gdsf (Greedy-Dual-Size-
    Frequency: large, rarely used models go first; the counts are this router's own)."""
    thrash_guard: str = "off"
    """When the cache thrashes (models loaded again within thrash_young_seconds of their eviction, thrash_trigger
    times within thrash_window_seconds), stop evicting models in use for loads of models that are not: such a load
    is refused with a retry-after hint (refuse: RESOURCE_EXHAUSTED / 503 + Retry-After) or waits for a copy to
    become idle (queue: up to thrash_queue_seconds, thrash_queue_limit loads at a time); off: loads evict as the
    eviction policy says (placement/thrash.py)."""
    thrash_young_seconds: float = 10.0
    """A model loaded again less than this long after its eviction is a sign of churn; while the guard is on,
    copies used within this time are not evicted for a load of a model not used within it."""
    thrash_trigger: int = 3
    """Reloads of evicted models within thrash_window_seconds that turn the guard on."""
    thrash_window_seconds: float = 30.0
    """The guard goes off after this long with neither such a reload nor a held-back load."""
    thrash_queue_seconds: float = 5.0
    """queue: how long a held-back load waits, in all, before it is refused."""
    thrash_queue_limit: int = 64
    """queue: loads waiting at once; more are refused at once."""
    access_log: bool = False
    """One log line per request (logger mesh.access: model, instance, status, latency, sizes, hit or miss), those
    mesh's doors forward and those the native engine routes itself alike; with --log-format json, a trace `mesh
    simulate` reads."""
    payload_log: str = ""
    """Sinks for the payloads (requests and responses) of chosen models, space-separated URIs: http(s)://... gets
    CloudEvents as KServe's logger sends them, file://PATH JSON lines; each URI's query picks models, a sample
    rate and headers (`?models=a,b&sample=0.1&headers=x-request-id`; mesh/payload_log.py). Never blocks a
    request: a full queue drops payloads, counted. Empty: no payload logging."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest gRPC message and REST body accepted and forwarded (both front doors use it)."""
    metrics_port: int = 2112
    """Prometheus metrics at http://HOST:PORT/metrics; 0 picks a free port, -1 disables the endpoint."""
    metrics_per_model: bool = False
    """Add a `model` label to the per-request metrics: a series per model, so only for small fleets."""
    health_check_seconds: float = 2.0
    """How often readiness (store answers, a runtime instance reachable) is re-evaluated besides on instance
    changes; the store probe gets at most 1 s of it."""
    dataplane: str = "python"
    """What serves the public ports: haproxy (a native engine that forwards requests for loaded models itself,
    with mesh as its control plane: docs/architecture.md), python (mesh's own doors), or auto (haproxy where its
    binary is installed and the configuration is one it serves, else python). `mesh serve` defaults to auto.
    haproxy-sidecar: the engine is not mesh's child but runs beside it (a container of the same pod), sharing
    dataplane_dir, and binds the public ports itself (docs/kubernetes.md)."""
    dataplane_dir: str = ""
    """The native engine's directory (config, maps, sockets): required with haproxy-sidecar, where it is the volume
    both containers mount; otherwise a private temporary directory when empty."""
    haproxy_binary: str = "haproxy"
    """The HAProxy binary (a name looked up on PATH, or a path)."""
    dataplane_threads: int = 1
    """Threads of the native engine; one serves tens of thousands of requests a second."""
    dataplane_latency: bool = True
    """The native engine times the requests it serves (per model, method and status, in the request histogram's
    buckets) and mesh adds them to modelmesh_api_request_milliseconds; off, only their count
    (modelmesh_dataplane_requests_total) is kept, and the engine does a little less per request."""
    dataplane_slots: int = 64
    """Runtime instances the native engine can forward to (each is a backend of the engine); instances beyond
    this many are served through mesh's door."""
    event_loop: str = "auto"
    """The event loop `mesh serve` runs on: uvloop, asyncio, or auto (uvloop where it is installed, else asyncio).
    uvloop takes less CPU per forwarded request (docs/benchmarks.md, scenario 1)."""

    tls_cert_file: str = ""
    """PEM certificate (chain) both front doors (gRPC and REST) serve TLS with; with tls_key_file. Reloaded when
    the file changes (new connections get the new one). Empty: plaintext."""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    """mTLS on both front doors: clients must present a certificate signed by this CA."""
    runtime_tls_ca_file: str = ""
    """The CA that runtimes' certificates chain to, for runtimes that serve TLS (empty: the system's roots)."""
    runtime_tls_cert_file: str = ""
    """The certificate the router presents to runtimes that require mTLS; with runtime_tls_key_file."""
    runtime_tls_key_file: str = ""
    etcd_tls_ca_file: str = ""
    """Dial etcd over TLS trusting this CA (any etcd_tls_* setting turns TLS to etcd on)."""
    etcd_tls_cert_file: str = ""
    """The client certificate etcd requires with --client-cert-auth; with etcd_tls_key_file."""
    etcd_tls_key_file: str = ""

    def front_door_tls(self) -> ServerTLS | None:
        return server_tls(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)

    def runtime_tls(self) -> ClientTLS | None:
        return client_tls(self.runtime_tls_ca_file, self.runtime_tls_cert_file, self.runtime_tls_key_file)

    def etcd_tls(self) -> ClientTLS | None:
        return client_tls(self.etcd_tls_ca_file, self.etcd_tls_cert_file, self.etcd_tls_key_file)

    def kv_url(self) -> str:
        return self.kv or f"file://{os.path.abspath(os.path.join(self.data_dir, 'kv.log'))}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then MESH_* variables, then explicit overrides that are not None."""
        return from_env(cls, "MESH_", environ, **overrides)
