"""The `mesh` command: thin — parse, call the library or the management API, print."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import grpc
import httpx

from mesh import bulk, logs, status
from mesh.config import DATAPLANES, Settings
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.management import management_channel
from mesh.tls import ClientTLS, client_tls

STATE_NAMES = status.STATE_NAMES
log = logging.getLogger("mesh.cli")


class UsageError(Exception):
    """Bad input (flags, a models file): said in one line, exit code 2."""


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


def _client_tls(args: argparse.Namespace) -> ClientTLS | None:
    """TLS to reach a router whose front doors serve it (--tls-ca, and --tls-cert/--tls-key for mTLS)."""
    try:
        return client_tls(args.tls_ca, args.tls_cert, args.tls_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _channel(args: argparse.Namespace) -> grpc.Channel:
    return management_channel(args.address, _client_tls(args))


def _stub(args: argparse.Namespace) -> mm_grpc.ModelMeshStub:
    return mm_grpc.ModelMeshStub(_channel(args))


def _status_text(info: mm.ModelStatusInfo) -> str:
    text = STATE_NAMES[info.status]
    copies = ", ".join(f"{c.location}={STATE_NAMES[c.copyStatus]}" for c in info.modelCopyInfos)
    errors = "; ".join(info.errors)
    return text + (f" [{copies}]" if copies else "") + (f" errors: {errors}" if errors else "")


def _register(args: argparse.Namespace) -> int:
    if args.file:
        return _bulk(args, bulk.register_all, "registered", "already present")
    _one_model(args, "register")
    if not args.type:
        raise UsageError("--type is required (or register many with -f FILE)")
    info = mm.ModelInfo(type=args.type, path=bulk.resolve_path(args.path, Path.cwd()), key=args.key)
    options = {"loadNow": args.load_now, "sync": args.sync, "meshRequiredLabels": args.label}
    request = mm.RegisterModelRequest(modelId=args.model_id, modelInfo=info, **options)
    print(f"{args.model_id}: {_status_text(_stub(args).registerModel(request, timeout=args.timeout))}")
    return 0


def _unregister(args: argparse.Namespace) -> int:
    if args.file:
        return _bulk(args, bulk.unregister_all, "unregistered", "not registered")
    _one_model(args, "unregister")
    _stub(args).unregisterModel(mm.UnregisterModelRequest(modelId=args.model_id), timeout=args.timeout)
    print(f"{args.model_id}: unregistered")
    return 0


def _one_model(args: argparse.Namespace, verb: str) -> None:
    if not args.model_id:
        raise UsageError(f"name a model to {verb}, or give a models file with -f FILE")
    if args.json or args.path_root:
        raise UsageError("--json and --path-root apply to a models file (-f FILE)")


def _bulk(args: argparse.Namespace, call: Callable[..., Awaitable[bulk.BulkResult]], done: str, unchanged: str) -> int:
    """Register or unregister every model of a file; print a summary; non-zero exit when any failed."""
    if args.model_id:
        raise UsageError(f"give a model id or -f FILE, not both ('{args.model_id}' and {args.file})")
    if getattr(args, "load_now", False):
        raise UsageError("--load-now applies to one model; models registered from a file load on first use")
    try:
        specs = bulk.read_specs(Path(args.file), Path(args.path_root) if args.path_root else None)
    except bulk.SpecError as exc:
        raise UsageError(str(exc)) from exc
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() and not args.json else None
    try:
        result = asyncio.run(
            call(
                args.address,
                specs,
                concurrency=args.concurrency,
                timeout=args.timeout,
                progress=bar,
                tls=_client_tls(args),
            )
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(
            json.dumps(
                {
                    done.replace(" ", "_"): result.done,
                    unchanged.replace(" ", "_"): result.unchanged,
                    "failed": [{"id": f.model_id, "code": f.code, "message": f.message} for f in result.failed],
                    "seconds": round(result.seconds, 3),
                },
                indent=2,
            )
        )
    else:
        print(_summary(result, done, unchanged))
    return 1 if result.failed else 0


def _summary(result: bulk.BulkResult, done: str, unchanged: str, shown: int = 10) -> str:
    rate = result.total / result.seconds if result.seconds else 0.0
    lines = [
        f"{done} {len(result.done)}, {unchanged} {len(result.unchanged)}, failed {len(result.failed)}"
        f" ({result.total} models in {result.seconds:.1f} s, {rate:.0f}/s)"
    ]
    for code, failures in result.failures_by_code().items():
        ids = ", ".join(f.model_id for f in failures[:shown])
        more = f" and {len(failures) - shown} more" if len(failures) > shown else ""
        lines.append(f"  {code} ({len(failures)}): {ids}{more}")
        messages = list(dict.fromkeys(f.message for f in failures))
        for message in messages[:3]:
            lines.append(f"    {message}")
        if len(messages) > 3:
            lines.append(f"    ... {len(messages) - 3} more messages")
    return "\n".join(lines)


class ProgressBar:
    """`[#####.....] 2500/5000  50%   1840/s` on one terminal line (stderr), redrawn ten times a second at most."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._drawn_at < 0.1:
            return
        self._drawn_at = now
        filled = self.WIDTH * done // total if total else self.WIDTH
        rate = done / (now - self._started) if now > self._started else 0.0
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._stream.write(f"\r[{bar}] {done}/{total} {100 * done // max(total, 1):3d}% {rate:6.0f}/s")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _mesh_status(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        data = status.fetch(channel, args.timeout)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(status.render(data, int(time.time() * 1000)))
    return 0


def _status(args: argparse.Namespace) -> int:
    reply = _stub(args).getModelStatus(mm.GetStatusRequest(modelId=args.model_id), timeout=args.timeout)
    print(f"{args.model_id}: {_status_text(reply)}")
    return 0 if reply.status != mm.ModelStatusInfo.NOT_FOUND else 1


def _list(args: argparse.Namespace) -> int:
    stub = admin_grpc.MeshAdminStub(_channel(args))
    listing = stub.ListModels(admin.ListModelsRequest(), timeout=args.timeout)
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(listing))
        return 0
    print(f"{'MODEL':<28} {'TYPE':<10} {'SIZE':>10}  STATUS")
    for m in listing.models:
        print(f"{m.modelId:<28} {m.modelInfo.type:<10} {m.sizeInBytes:>10}  {_status_text(m.status)}")
    for v in listing.vmodels:
        print(f"{v.vModelId:<28} {'vmodel':<10} {'':>10}  -> {v.status.activeModelId}")
    return 0


def _shape_of(data: Any) -> list[int]:
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        data = data[0] if data else None
    return shape


def _infer(args: argparse.Namespace) -> int:
    data = json.loads(args.data)
    leaf = data
    while isinstance(leaf, list) and leaf:
        leaf = leaf[0]
    datatype = args.datatype or ("BYTES" if isinstance(leaf, str) else "FP32")
    body = {"inputs": [{"name": args.input_name, "shape": _shape_of(data), "datatype": datatype, "data": data}]}
    url = f"{args.rest.rstrip('/')}/v2/models/{args.model}/infer"
    tls = _client_tls(args)
    verify: ssl.SSLContext | bool = True
    if tls is not None:
        verify = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
        if tls.cert is not None and tls.key is not None:
            verify.load_cert_chain(tls.cert, tls.key)
    response = httpx.post(url, json=body, timeout=args.timeout, verify=verify)
    print(json.dumps(response.json(), indent=2))
    return 0 if response.status_code == 200 else 1


def _runtime_endpoint(text: str) -> tuple[str, str]:
    instance_id, sep, endpoint = text.partition("=")
    if not sep or not instance_id or not endpoint:
        raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT (or ID=unix:PATH), got '{text}'")
    return instance_id, endpoint


def tls_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", default="", help="the router serves TLS: trust this CA (PEM)")
    parser.add_argument("--tls-cert", default="", help="mTLS: present this client certificate (PEM)")
    parser.add_argument("--tls-key", default="", help="mTLS: the client certificate's key")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description="A multi-model serving router.")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format", choices=logs.FORMATS, default="text", help="json: one JSON object per line (ts, level, ...)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

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

    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--address", default="127.0.0.1:8033", help="the router's gRPC address")
        p.add_argument("--timeout", type=float, default=120.0)
        tls_client_arguments(p)
        return p

    models = sub.add_parser("models", help="register, list, inspect and unregister models")
    msub = models.add_subparsers(dest="models_command", required=True)

    def from_file(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-f", "--file", help="a YAML list of models (id, type, path, key): do them all")
        p.add_argument(
            "--path-root", help="with -f: resolve relative paths against this folder (default: the file's folder)"
        )
        p.add_argument("--concurrency", type=_positive, default=bulk.DEFAULT_CONCURRENCY, help="with -f: calls at once")
        p.add_argument("--json", action="store_true", help="with -f: print the outcome per model as JSON")
        return p

    reg = from_file(client(msub.add_parser("register", help="register a model, or every model of a file (-f)")))
    reg.add_argument("model_id", nargs="?")
    reg.add_argument("--type", help="model type, e.g. sklearn, text, echo (required for one model)")
    reg.add_argument("--path", default="", help="model file or directory")
    reg.add_argument("--key", default="", help="opaque key passed to the runtime")
    reg.add_argument("--load-now", action="store_true")
    reg.add_argument("--sync", action="store_true", help="with --load-now: wait for the load")
    reg.add_argument("--label", action="append", default=[], help="load only on instances with it (repeatable)")
    reg.set_defaults(func=_register)
    lst = client(msub.add_parser("list", help="list registered models and vmodels"))
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)
    st = client(msub.add_parser("status", help="one model's status"))
    st.add_argument("model_id")
    st.set_defaults(func=_status)
    unreg = from_file(
        client(msub.add_parser("unregister", help="unregister a model, or every model of a file (-f); unload copies"))
    )
    unreg.add_argument("model_id", nargs="?")
    unreg.set_defaults(func=_unregister)

    mesh_status = client(sub.add_parser("status", help="the router's runtime instances and models, as tables"))
    mesh_status.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    mesh_status.set_defaults(func=_mesh_status)

    infer = sub.add_parser("infer", help="send one inference request over REST")
    infer.add_argument("model")
    infer.add_argument("--data", required=True, help='tensor data as JSON, e.g. "[[5.1, 3.5, 1.4, 0.2]]"')
    infer.add_argument("--datatype", help="v2 datatype (default FP32, or BYTES for strings)")
    infer.add_argument("--input-name", default="input-0")
    infer.add_argument("--rest", default="http://127.0.0.1:8008", help="the router's REST address")
    infer.add_argument("--timeout", type=float, default=120.0)
    tls_client_arguments(infer)
    infer.set_defaults(func=_infer)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)

    def error(message: str) -> None:
        # With --log-format json every stderr line is a JSON object, errors included.
        if args.log_format == "json":
            log.error(message)
        else:
            print(f"error: {message}", file=sys.stderr)

    try:
        return args.func(args)
    except UsageError as exc:
        error(str(exc))
        return 2
    except grpc.RpcError as exc:
        error(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
        return 1
    except httpx.HTTPError as exc:
        error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
