"""The settings every runtime process shares (the built-in runtime and each adapter): where its SPI serves, what
its runtimeStatus reports, how it stops, joining a mesh's store, TLS; and their command-line flags.

RuntimeSettings (adapters/builtin) and AdapterSettings (adapters/common/settings.py) extend ProcessSettings with
their own fields and defaults; add_process_arguments and process_settings fill the shared part from flags.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.placement.records import checked_labels


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    host: str = "127.0.0.1"
    """Address the SPI (mmesh.ModelRuntime) binds; a runtime serves only routers on its own host by default."""
    port: int = 0
    """SPI port; 0 picks a free one, which is then written to `port_file`. ModelMesh's adapters use 8085."""
    uds: Path | None = None
    """Also serve on this unix-domain socket (as `unix:PATH` in the port file), for a router on the same host; the
    socket file is removed on stop. Published records still name host:port: a remote router can't dial it."""
    port_file: Path | None = None
    """Where to write {"port", "pid", "instance_id"} (and "uds") atomically once serving."""
    instance_id: str = ""
    """Names this process in logs, the port file and the mesh; defaults to [<runtime>-]<hostname>-<pid>."""
    capacity_bytes: int = 256 * 1024 * 1024
    """Model memory reported in runtimeStatus: the router fills up to it."""
    device_capacity_bytes: tuple[int, ...] = ()
    """Accelerator (GPU) memory per device, reported in runtimeStatus (meshDevices): models that need device memory
    are placed where the sum has room. Empty: host memory only."""
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
    """When set (e.g. etcd://127.0.0.1:2379), the process publishes its own instance record there, under a lease,
    so routers anywhere can place models on it; empty when a router that started it registers it instead."""
    kv_prefix: str = "mesh"
    """The mesh's key prefix in that store."""
    advertise: str = ""
    """host:port routers use to reach the SPI; defaults to host and the bound port."""
    lease_seconds: float = 10.0
    """The published record vanishes this long after the process stops keeping it alive."""
    metrics_port: int = -1
    """Serve this process's Prometheus metrics at http://HOST:PORT/metrics (0 picks a free port); -1: not here."""
    tls_cert: str = ""
    """Serve TLS with this PEM certificate (and tls_key), reloaded when the file changes; empty: plaintext."""
    tls_key: str = ""
    tls_client_ca: str = ""
    """mTLS: callers (routers) must present a certificate signed by this CA."""
    etcd_tls_ca: str = ""
    """With an etcd:// kv: dial etcd over TLS trusting this CA (etcd_tls_cert/key: the client certificate)."""
    etcd_tls_cert: str = ""
    etcd_tls_key: str = ""
    labels: tuple[str, ...] = ()
    """Labels this instance carries (meshLabels): models registered with required labels load only where all are."""
    handoff_grace_s: float = 30.0
    """On SIGTERM, with kv set: how long the runtime keeps serving while routers load its recently used models on
    other instances, before it leaves routing (0: leave at once). Keep the pod's termination grace above it."""
    handoff_recent_s: float = 600.0
    """Models used within this long are handed off (the routers' MESH_WORKING_SET_SECONDS)."""
    left_marker: Path | None = None
    """A file written once the process has left routing and no call comes any more (removed at start): a model
    server beside it (its pod's preStop hook) waits for it before stopping."""


def positive(text: str) -> int:
    """argparse type: an integer above 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def devices_flag(text: str) -> tuple[int, ...]:
    """argparse type for --device-capacity-bytes: bytes per device, comma-separated."""
    try:
        devices = tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bytes per device, comma-separated, got {text!r}") from None
    if any(d <= 0 for d in devices):
        raise argparse.ArgumentTypeError(f"each device's bytes must be positive, got {text!r}")
    return devices


def labels_flag(text: str) -> tuple[str, ...]:
    """argparse type for --labels: comma-separated labels."""
    try:
        return checked_labels(label for label in text.split(",") if label)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_process_arguments(parser: argparse.ArgumentParser, defaults: ProcessSettings) -> None:
    """The shared flags, with the defaults of the settings class the process uses."""
    d = defaults
    parser.add_argument("--host", default=d.host)
    parser.add_argument("--port", type=int, default=d.port, help="SPI port (0 = any free)")
    parser.add_argument("--uds", type=Path, help="also serve on this unix-domain socket path")
    parser.add_argument("--port-file", type=Path, help="write the bound port here as JSON once serving")
    parser.add_argument("--instance-id", default="")
    parser.add_argument("--capacity-bytes", type=positive, default=d.capacity_bytes)
    parser.add_argument(
        "--device-capacity-bytes",
        type=devices_flag,
        default=d.device_capacity_bytes,
        help="accelerator memory per device, comma-separated (one value per GPU); default: none",
    )
    parser.add_argument("--max-loading-concurrency", type=positive, default=d.max_loading_concurrency)
    parser.add_argument("--load-timeout-ms", type=positive, default=d.load_timeout_ms)
    parser.add_argument("--default-model-size-bytes", type=positive, default=d.default_model_size_bytes)
    parser.add_argument("--parent-pid", type=positive, help="stop when this process exits")
    parser.add_argument("--shutdown-grace-s", type=float, default=d.shutdown_grace_s)
    parser.add_argument(
        "--handoff-grace-s",
        type=float,
        default=d.handoff_grace_s,
        help="on SIGTERM: seconds to wait for recently used models to load elsewhere before leaving (0: leave now)",
    )
    parser.add_argument("--handoff-recent-s", type=float, default=d.handoff_recent_s)
    parser.add_argument("--left-marker", type=Path, help="write this file once out of routing, on the way out")
    parser.add_argument("--log-level", default=d.log_level)
    parser.add_argument("--log-format", choices=("text", "json"), default=d.log_format)
    parser.add_argument("--kv", default=d.kv, help="publish this instance in the mesh's store (etcd://h:p, file://P)")
    parser.add_argument("--kv-prefix", default=d.kv_prefix)
    parser.add_argument("--advertise", default=d.advertise, help="host:port routers reach the SPI at")
    parser.add_argument("--lease-seconds", type=float, default=d.lease_seconds)
    parser.add_argument("--tls-cert", default="", help="serve TLS with this PEM certificate (reloaded on change)")
    parser.add_argument("--tls-key", default="", help="the certificate's PEM key")
    parser.add_argument("--tls-client-ca", default="", help="mTLS: require client certificates signed by this CA")
    parser.add_argument("--etcd-tls-ca", default="", help="with --kv etcd://: dial etcd over TLS, trusting this CA")
    parser.add_argument("--etcd-tls-cert", default="", help="with --kv etcd://: the client certificate etcd requires")
    parser.add_argument("--etcd-tls-key", default="", help="with --kv etcd://: that certificate's key")
    parser.add_argument("--labels", type=labels_flag, default=(), help="labels this instance carries: a,b,...")


_FROM_FLAGS = (
    "host", "port", "uds", "port_file", "capacity_bytes", "max_loading_concurrency", "load_timeout_ms",
    "default_model_size_bytes", "parent_pid", "shutdown_grace_s", "log_format", "kv", "kv_prefix", "advertise",
    "lease_seconds", "tls_cert", "tls_key", "tls_client_ca", "etcd_tls_ca", "etcd_tls_cert", "etcd_tls_key",
    "labels", "handoff_grace_s", "handoff_recent_s", "left_marker", "device_capacity_bytes",
)  # fmt: skip


def process_settings(args: argparse.Namespace, instance_prefix: str = "") -> dict[str, Any]:
    """The shared settings fields from flags add_process_arguments parsed; the default instance id is
    [instance_prefix-]<hostname>-<pid>."""
    default_id = f"{socket.gethostname()}-{os.getpid()}"
    return {
        **{name: getattr(args, name) for name in _FROM_FLAGS},
        "instance_id": args.instance_id or (f"{instance_prefix}-{default_id}" if instance_prefix else default_id),
        "log_level": args.log_level.upper(),
    }
