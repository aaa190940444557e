"""`mesh serve` and `mesh controller`: the long-running processes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mesh.cli.common import UsageError
from mesh.config import DATAPLANES, Settings
from mesh.placement.records import checked_labels


def _serve(args: argparse.Namespace) -> int:
    from mesh.engine.frontdoor import native_engine
    from mesh.serve import ServeOptions, event_loop_factory, run

    settings = Settings.from_env(
        host=args.host,
        grpc_port=args.grpc_port,
        rest_port=args.rest_port,
        metrics_port=args.metrics_port,
        kv=args.kv,
        data_dir=args.data_dir,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        tls_client_ca_file=args.tls_client_ca,
        # `mesh serve` runs the native engine where it is installed, unless told otherwise (flag or MESH_DATAPLANE).
        dataplane=args.dataplane or (None if "MESH_DATAPLANE" in os.environ else "auto"),
        dataplane_dir=args.dataplane_dir,
    )
    options = ServeOptions(
        runtimes=args.runtimes,
        capacity_bytes=int(args.capacity_mb * 1024 * 1024),
        examples_dir=None if args.no_examples else ServeOptions.examples_dir,
        port_file=Path(args.port_file) if args.port_file else None,
        log_level=args.log_level.upper(),
        log_format=args.log_format,
        runtime_endpoints=tuple(args.runtime_endpoint),
        runtime_labels=_labels(args.runtime_labels),
    )
    try:
        event_loop_factory(settings.event_loop)  # a MESH_EVENT_LOOP that names no loop, or uvloop not installed
        native_engine(settings)  # haproxy asked for and not installed, or a configuration it cannot serve
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    run(settings, options)
    return 0


def _controller(args: argparse.Namespace) -> int:
    from mesh.controller.controller import ConfigError, run
    from mesh.controller.settings import ControllerSettings

    try:
        settings = ControllerSettings.from_env(
            mesh_address=args.mesh_address,
            kv=args.kv,
            kv_prefix=args.kv_prefix,
            image=args.image,
            watch_namespace=args.namespace,
            scale_to_zero=False if args.no_scale_to_zero else None,
            resync_seconds=args.resync_seconds,
            poll_seconds=args.poll_seconds,
        )
        run(settings, args.kubeconfig, args.context)
    except (ValueError, ConfigError) as exc:  # a MESH_CONTROLLER_* value that does not parse; no image known
        raise UsageError(str(exc)) from exc
    return 0


def _labels(text: str) -> tuple[str, ...]:
    try:
        return checked_labels(label for label in text.split(",") if label)
    except ValueError as exc:
        raise UsageError(f"--runtime-labels: {exc}") from None


def _runtime_endpoint(text: str) -> tuple[str, str]:
    instance_id, sep, endpoint = text.partition("=")
    if not sep or not instance_id or not endpoint:
        raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT (or ID=unix:PATH), got '{text}'")
    return instance_id, endpoint


def add_commands(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run a router and built-in runtimes on this machine")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default 8033; 0 = any free)")
    serve.add_argument("--rest-port", type=int, default=None, help="REST port (default 8008; 0 = any, -1 = off)")
    serve.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus /metrics port (default 2112; 0 = any, -1 = off)"
    )
    serve.add_argument(
        "--kv",
        default=None,
        help="state store: memory://, file://PATH or etcd://HOST:PORT[,...] (default DATA_DIR/kv.log)",
    )
    serve.add_argument("--data-dir", default=None, help="where state and example models live (default .mesh)")
    serve.add_argument("--runtimes", type=int, default=2, help="built-in runtime processes to start")
    serve.add_argument("--capacity-mb", type=float, default=2.0, help="model memory per runtime, in MiB")
    serve.add_argument(
        "--runtime-endpoint",
        action="append",
        default=[],
        type=_runtime_endpoint,
        metavar="ID=HOST:PORT",
        help="also route to a runtime running apart (an adapter beside MLServer, TorchServe or Triton); repeatable",
    )
    serve.add_argument(
        "--runtime-labels",
        default="",
        metavar="L1,L2",
        help="labels the --runtime-endpoint runtimes carry besides their own (models requiring them load there)",
    )
    serve.add_argument("--no-examples", action="store_true", help="do not register the example models")
    serve.add_argument("--port-file", help="write the bound ports as JSON here once serving")
    serve.add_argument("--tls-cert", default=None, help="serve both front doors over TLS with this PEM certificate")
    serve.add_argument("--tls-key", default=None, help="the certificate's PEM key")
    serve.add_argument("--tls-client-ca", default=None, help="mTLS: require client certificates signed by this CA")
    dataplanes = "what serves the public ports: haproxy (native), auto (it if installed), haproxy-sidecar, python"
    serve.add_argument("--dataplane", choices=DATAPLANES, default=None, help=dataplanes)
    serve.add_argument("--dataplane-dir", default=None, help="the native engine's files and sockets (see --dataplane)")
    serve.set_defaults(func=_serve)

    ctl = sub.add_parser("controller", help="run the Kubernetes controller (KServe, ModelMesh mode)")
    ctl.add_argument("--kubeconfig", default=None, help="default: in-cluster service account, else ~/.kube/config")
    ctl.add_argument("--context", default=None, help="kubeconfig context")
    ctl.add_argument("--mesh-address", default=None, help="the routers' gRPC address (default mesh.mesh-system:8033)")
    ctl.add_argument("--kv", default=None, help="the routers' etcd://HOST:PORT, given to runtime pods")
    ctl.add_argument("--kv-prefix", default=None, help="the routers' MESH_KV_PREFIX (default mesh)")
    ctl.add_argument("--image", default=None, help="image of the adapter and router containers in runtime pods")
    ctl.add_argument("--namespace", default=None, help="only this namespace (default: all)")
    ctl.add_argument("--no-scale-to-zero", action="store_true", help="keep runtime Deployments no model uses")
    ctl.add_argument("--resync-seconds", type=float, default=None, help="full reconciliation at least this often")
    ctl.add_argument("--poll-seconds", type=float, default=None, help="look again this soon while models load")
    ctl.set_defaults(func=_controller)
