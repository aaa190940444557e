"""The `mesh` command: thin — parse, call the library or the management API, print."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx

from mesh.config import Settings
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc

STATE_NAMES = {v: k for k, v in mm.ModelStatusInfo.ModelStatus.items()}


def _serve(args: argparse.Namespace) -> int:
    from mesh.serve import ServeOptions, serve

    settings = Settings.from_env(
        host=args.host, grpc_port=args.grpc_port, rest_port=args.rest_port, kv=args.kv, data_dir=args.data_dir
    )
    options = ServeOptions(
        runtimes=args.runtimes,
        capacity_bytes=int(args.capacity_mb * 1024 * 1024),
        examples_dir=None if args.no_examples else ServeOptions.examples_dir,
        port_file=Path(args.port_file) if args.port_file else None,
    )
    asyncio.run(serve(settings, options))
    return 0


def _stub(args: argparse.Namespace) -> mm_grpc.ModelMeshStub:
    return mm_grpc.ModelMeshStub(grpc.insecure_channel(args.address))


def _status_text(status: mm.ModelStatusInfo) -> str:
    text = STATE_NAMES[status.status]
    copies = ", ".join(f"{c.location}={STATE_NAMES[c.copyStatus]}" for c in status.modelCopyInfos)
    errors = "; ".join(status.errors)
    return text + (f" [{copies}]" if copies else "") + (f" errors: {errors}" if errors else "")


def _register(args: argparse.Namespace) -> int:
    info = mm.ModelInfo(type=args.type, path=str(Path(args.path).resolve()) if args.path else "", key=args.key)
    request = mm.RegisterModelRequest(modelId=args.model_id, modelInfo=info, loadNow=args.load_now, sync=args.sync)
    print(f"{args.model_id}: {_status_text(_stub(args).registerModel(request, timeout=args.timeout))}")
    return 0


def _unregister(args: argparse.Namespace) -> int:
    _stub(args).unregisterModel(mm.UnregisterModelRequest(modelId=args.model_id), timeout=args.timeout)
    print(f"{args.model_id}: unregistered")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = _stub(args).getModelStatus(mm.GetStatusRequest(modelId=args.model_id), timeout=args.timeout)
    print(f"{args.model_id}: {_status_text(status)}")
    return 0 if status.status != mm.ModelStatusInfo.NOT_FOUND else 1


def _list(args: argparse.Namespace) -> int:
    stub = admin_grpc.MeshAdminStub(grpc.insecure_channel(args.address))
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
    response = httpx.post(url, json=body, timeout=args.timeout)
    print(json.dumps(response.json(), indent=2))
    return 0 if response.status_code == 200 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description="A multi-model serving router.")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a router and built-in runtimes on this machine")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default 8033; 0 = any free)")
    serve.add_argument("--rest-port", type=int, default=None, help="REST port (default 8008; 0 = any, -1 = off)")
    serve.add_argument(
        "--kv",
        default=None,
        help="state store: memory://, file://PATH or etcd://HOST:PORT[,...] (default DATA_DIR/kv.log)",
    )
    serve.add_argument("--data-dir", default=None, help="where state and example models live (default .mesh)")
    serve.add_argument("--runtimes", type=int, default=2, help="built-in runtime processes to start")
    serve.add_argument("--capacity-mb", type=float, default=2.0, help="model memory per runtime, in MiB")
    serve.add_argument("--no-examples", action="store_true", help="do not register the example models")
    serve.add_argument("--port-file", help="write the bound ports as JSON here once serving")
    serve.set_defaults(func=_serve)

    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--address", default="127.0.0.1:8033", help="the router's gRPC address")
        p.add_argument("--timeout", type=float, default=120.0)
        return p

    models = sub.add_parser("models", help="register, list, inspect and unregister models")
    msub = models.add_subparsers(dest="models_command", required=True)
    reg = client(msub.add_parser("register", help="register a model"))
    reg.add_argument("model_id")
    reg.add_argument("--type", required=True, help="model type, e.g. sklearn, text, echo")
    reg.add_argument("--path", default="", help="model file or directory")
    reg.add_argument("--key", default="", help="opaque key passed to the runtime")
    reg.add_argument("--load-now", action="store_true")
    reg.add_argument("--sync", action="store_true", help="with --load-now: wait for the load")
    reg.set_defaults(func=_register)
    lst = client(msub.add_parser("list", help="list registered models and vmodels"))
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)
    st = client(msub.add_parser("status", help="one model's status"))
    st.add_argument("model_id")
    st.set_defaults(func=_status)
    unreg = client(msub.add_parser("unregister", help="unregister a model and unload its copies"))
    unreg.add_argument("model_id")
    unreg.set_defaults(func=_unregister)

    infer = sub.add_parser("infer", help="send one inference request over REST")
    infer.add_argument("model")
    infer.add_argument("--data", required=True, help='tensor data as JSON, e.g. "[[5.1, 3.5, 1.4, 0.2]]"')
    infer.add_argument("--datatype", help="v2 datatype (default FP32, or BYTES for strings)")
    infer.add_argument("--input-name", default="input-0")
    infer.add_argument("--rest", default="http://127.0.0.1:8008", help="the router's REST address")
    infer.add_argument("--timeout", type=float, default=120.0)
    infer.set_defaults(func=_infer)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    except httpx.HTTPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
