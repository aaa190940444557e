"""The built-in runtime's settings: one typed object, filled from command-line flags by `parse_args`."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapters.common.process import add_tls_arguments, tls_settings


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    host: str = "127.0.0.1"
    """Address to bind; the runtime serves only the router on its own host by default."""
    port: int = 0
    """Port to bind; 0 picks a free one, which is then written to `port_file`."""
    uds: Path | None = None
    """Also serve on this unix-domain socket (as `unix:PATH` in the port file), for a router on the same host;
    the socket file is removed on stop. Published records still name host:port: a remote router can't dial it."""
    port_file: Path | None = None
    """Where to write {"port": N, "pid": P, "instance_id": ID} (and "uds": "unix:PATH") atomically once serving."""
    capacity_bytes: int = 256 * 1024 * 1024
    """Reported in runtimeStatus. The router enforces it; this process loads whatever it is asked to."""
    memory_limit_bytes: int = 0
    """A real limit, apart from the capacity reported: a load that would hold more fails RESOURCE_EXHAUSTED (as a
    server out of memory does). 0: none. Reporting a capacity above it is how tests play a runtime that lies."""
    instance_id: str = ""
    """Names this process in logs and the port file; defaults to <hostname>-<pid>."""
    max_loading_concurrency: int = 2
    """Loads that may run at once; further loadModel calls wait their turn."""
    load_timeout_ms: int = 30_000
    """Reported in runtimeStatus, and enforced: a load that takes longer fails with DEADLINE_EXCEEDED."""
    default_model_size_bytes: int = 1024 * 1024
    """Reported in runtimeStatus: the size the router assumes before it knows better."""
    parent_pid: int | None = None
    """Stop (gracefully) once this process is gone, so a parent that dies without stopping us leaves no orphan."""
    shutdown_grace_s: float = 5.0
    """On SIGTERM/SIGINT, how long in-flight calls get to finish."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest gRPC message sent or received (the default 4 MiB is too small for tensors)."""
    log_level: str = "INFO"
    log_format: str = "text"
    """"text", or "json" for one JSON object per log line (mesh.logs)."""
    kv: str = ""
    """When set (e.g. etcd://127.0.0.1:2379), the runtime publishes its own instance record there, under a lease,
    so routers anywhere can place models on it; empty when a router that started it registers it instead."""
    kv_prefix: str = "mesh"
    """The mesh's key prefix in that store."""
    advertise: str = ""
    """host:port routers use to reach this runtime; defaults to host and the bound port."""
    lease_seconds: float = 10.0
    """The published record vanishes this long after the process stops keeping it alive."""
    metrics_port: int = -1
    """Serve this process's Prometheus metrics at http://HOST:PORT/metrics (0 picks a free port); -1: not served
    here, as under `mesh serve`, whose router serves every runtime's metrics (PROMETHEUS_MULTIPROC_DIR)."""
    tls_cert: str = ""
    """Serve TLS with this PEM certificate (and tls_key), reloaded when the file changes; empty: plaintext."""
    tls_key: str = ""
    tls_client_ca: str = ""
    """mTLS: callers (routers) must present a certificate signed by this CA."""
    etcd_tls_ca: str = ""
    """With an etcd:// kv: dial etcd over TLS trusting this CA (etcd_tls_cert/key: the client certificate)."""
    etcd_tls_cert: str = ""
    etcd_tls_key: str = ""


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> RuntimeSettings:
    """Settings from command-line flags (`argv`, or sys.argv[1:] when None)."""
    d = RuntimeSettings()
    parser = argparse.ArgumentParser(
        prog="python -m adapters.builtin",
        description="mesh's built-in Python model runtime: mmesh.ModelRuntime and inference.GRPCInferenceService",
    )
    parser.add_argument("--host", default=d.host)
    parser.add_argument("--port", type=int, default=d.port, help="0 (default) binds a free port")
    parser.add_argument("--uds", type=Path, help="also serve on this unix-domain socket path")
    parser.add_argument("--port-file", type=Path, help="write the bound port here as JSON once serving")
    parser.add_argument("--capacity-bytes", type=_positive, default=d.capacity_bytes)
    parser.add_argument("--memory-limit-bytes", type=int, default=0, help="refuse loads past this many bytes held")
    parser.add_argument("--instance-id", default="")
    parser.add_argument("--max-loading-concurrency", type=_positive, default=d.max_loading_concurrency)
    parser.add_argument("--load-timeout-ms", type=_positive, default=d.load_timeout_ms)
    parser.add_argument("--default-model-size-bytes", type=_positive, default=d.default_model_size_bytes)
    parser.add_argument("--parent-pid", type=_positive, help="stop when this process exits")
    parser.add_argument("--shutdown-grace-s", type=float, default=d.shutdown_grace_s)
    parser.add_argument("--log-level", default=d.log_level)
    parser.add_argument("--log-format", choices=("text", "json"), default=d.log_format)
    parser.add_argument("--kv", default=d.kv, help="publish this instance in the mesh's store (etcd://h:p, file://P)")
    parser.add_argument("--kv-prefix", default=d.kv_prefix)
    parser.add_argument("--advertise", default=d.advertise, help="host:port routers reach this runtime at")
    parser.add_argument("--lease-seconds", type=float, default=d.lease_seconds)
    parser.add_argument("--metrics-port", type=int, default=d.metrics_port, help="serve /metrics (0 = any, -1 = off)")
    add_tls_arguments(parser)
    args = parser.parse_args(argv)
    return RuntimeSettings(
        host=args.host,
        port=args.port,
        uds=args.uds,
        port_file=args.port_file,
        capacity_bytes=args.capacity_bytes,
        memory_limit_bytes=args.memory_limit_bytes,
        instance_id=args.instance_id or f"{socket.gethostname()}-{os.getpid()}",
        max_loading_concurrency=args.max_loading_concurrency,
        load_timeout_ms=args.load_timeout_ms,
        default_model_size_bytes=args.default_model_size_bytes,
        parent_pid=args.parent_pid,
        shutdown_grace_s=args.shutdown_grace_s,
        log_level=args.log_level.upper(),
        log_format=args.log_format,
        kv=args.kv,
        kv_prefix=args.kv_prefix,
        advertise=args.advertise,
        lease_seconds=args.lease_seconds,
        metrics_port=args.metrics_port,
        **tls_settings(args),
    )
