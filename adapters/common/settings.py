"""Settings every adapter shares (its SPI endpoint, capacity, puller, joining a mesh), filled from flags.

Each adapter adds the flags of its own model server (`parser` is returned for that) and keeps them in a
settings object of its own beside this one.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from adapters.common.process import add_tls_arguments, tls_settings


@dataclass(frozen=True, slots=True)
class AdapterSettings:
    host: str = "127.0.0.1"
    """Address the SPI (mmesh.ModelRuntime) binds."""
    port: int = 0
    """SPI port; 0 picks a free one, which is then written to `port_file`. ModelMesh's adapters use 8085."""
    uds: Path | None = None
    """Also serve the SPI on this unix-domain socket."""
    port_file: Path | None = None
    """Where to write {"port", "pid", "instance_id"} atomically once serving."""
    instance_id: str = ""
    capacity_bytes: int = 1024 * 1024 * 1024
    """Model memory the router may fill; ModelMesh derives it from the container's memory request minus a buffer."""
    max_loading_concurrency: int = 1
    load_timeout_ms: int = 90_000
    """A load (pull + server load) that takes longer fails with DEADLINE_EXCEEDED and is undone."""
    default_model_size_bytes: int = 1_000_000
    """The size assumed before anything is known, and for predictModelSize of a remote model."""
    size_multiplier: float = 1.25
    """Model size estimate = bytes on disk × this, when the server does not report memory (ModelMesh's default)."""
    models_dir: Path = Path("models")
    """Where the puller writes each model's files (one folder per model id, removed on unload); the model server
    must see the same path (a shared volume in a pod)."""
    storage_config_dir: Path | None = None
    """KServe's storage-config secret, mounted: one JSON file per storage key (S3 credentials, bucket...)."""
    local_roots: tuple[Path, ...] = field(default_factory=tuple)
    """Local model paths must lie under one of these (empty: any absolute path)."""
    parent_pid: int | None = None
    shutdown_grace_s: float = 5.0
    max_message_bytes: int = 64 * 1024 * 1024
    log_level: str = "INFO"
    log_format: str = "text"
    kv: str = ""
    """When set, publish this instance in the mesh's store (etcd://h:p) under a lease."""
    kv_prefix: str = "mesh"
    advertise: str = ""
    """host:port routers reach the SPI at; defaults to host and the bound port."""
    advertise_data: str = ""
    """host:port routers send inference to; defaults to the model server's own gRPC address."""
    lease_seconds: float = 10.0
    metrics_port: int = -1
    """Adapters serve no metrics of their own: the model server has its own /metrics."""
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


def adapter_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the shared flags; the adapter adds its server's flags and calls `adapter_settings`."""
    d = AdapterSettings()
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default=d.host)
    parser.add_argument("--port", type=int, default=d.port, help="SPI port (0 = any free)")
    parser.add_argument("--uds", type=Path, help="also serve the SPI on this unix-domain socket path")
    parser.add_argument("--port-file", type=Path, help="write the bound port here as JSON once serving")
    parser.add_argument("--instance-id", default="")
    parser.add_argument("--capacity-bytes", type=_positive, default=d.capacity_bytes)
    parser.add_argument("--max-loading-concurrency", type=_positive, default=d.max_loading_concurrency)
    parser.add_argument("--load-timeout-ms", type=_positive, default=d.load_timeout_ms)
    parser.add_argument("--default-model-size-bytes", type=_positive, default=d.default_model_size_bytes)
    parser.add_argument("--size-multiplier", type=float, default=d.size_multiplier)
    parser.add_argument("--models-dir", type=Path, default=d.models_dir, help="where pulled model files go")
    parser.add_argument("--storage-config-dir", type=Path, help="KServe storage-config secret (one JSON per key)")
    parser.add_argument("--local-root", type=Path, action="append", default=[], help="allowed local model folder")
    parser.add_argument("--parent-pid", type=_positive, help="stop when this process exits")
    parser.add_argument("--shutdown-grace-s", type=float, default=d.shutdown_grace_s)
    parser.add_argument("--log-level", default=d.log_level)
    parser.add_argument("--log-format", choices=("text", "json"), default=d.log_format)
    parser.add_argument("--kv", default=d.kv, help="publish this instance in the mesh's store (etcd://h:p)")
    parser.add_argument("--kv-prefix", default=d.kv_prefix)
    parser.add_argument("--advertise", default=d.advertise, help="host:port routers reach the SPI at")
    parser.add_argument("--advertise-data", default=d.advertise_data, help="host:port routers send inference to")
    parser.add_argument("--lease-seconds", type=float, default=d.lease_seconds)
    add_tls_arguments(parser)
    return parser


def adapter_settings(args: argparse.Namespace, runtime: str) -> AdapterSettings:
    """The shared settings from parsed flags; `runtime` names the default instance id (<runtime>-<host>-<pid>)."""
    return AdapterSettings(
        host=args.host,
        port=args.port,
        uds=args.uds,
        port_file=args.port_file,
        instance_id=args.instance_id or f"{runtime}-{socket.gethostname()}-{os.getpid()}",
        capacity_bytes=args.capacity_bytes,
        max_loading_concurrency=args.max_loading_concurrency,
        load_timeout_ms=args.load_timeout_ms,
        default_model_size_bytes=args.default_model_size_bytes,
        size_multiplier=args.size_multiplier,
        models_dir=args.models_dir.resolve(),
        storage_config_dir=args.storage_config_dir,
        local_roots=tuple(p.resolve() for p in args.local_root),
        parent_pid=args.parent_pid,
        shutdown_grace_s=args.shutdown_grace_s,
        log_level=args.log_level.upper(),
        log_format=args.log_format,
        kv=args.kv,
        kv_prefix=args.kv_prefix,
        advertise=args.advertise,
        advertise_data=args.advertise_data,
        lease_seconds=args.lease_seconds,
        **tls_settings(args),
    )
