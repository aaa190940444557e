"""`mesh status` (the router's instances and models, as tables), `mesh explain MODEL` (where a model is, why, and
what its next load would do) and `mesh infer` (one REST request)."""

from __future__ import annotations

import argparse
import json
import ssl
import time
from typing import Any

import httpx

from mesh import status
from mesh.cli.common import channel, client_arguments, client_tls_of, tls_client_arguments
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.placement.explaining import as_text


def _mesh_status(args: argparse.Namespace) -> int:
    with channel(args) as opened:
        data = status.fetch(opened, args.timeout)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(status.render(data, int(time.time() * 1000)))
    return 0


def _explain(args: argparse.Namespace) -> int:
    with channel(args) as opened:
        answer = admin_grpc.MeshAdminStub(opened).ExplainModel(
            admin.ExplainModelRequest(modelId=args.model), timeout=args.timeout
        )
    doc = json.loads(answer.json)
    print(json.dumps(doc, indent=2) if args.json else as_text(doc, int(time.time() * 1000)))
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
    tls = client_tls_of(args)
    verify: ssl.SSLContext | bool = True
    if tls is not None:
        verify = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
        if tls.cert is not None and tls.key is not None:
            verify.load_cert_chain(tls.cert, tls.key)
    response = httpx.post(url, json=body, timeout=args.timeout, verify=verify)
    print(json.dumps(response.json(), indent=2))
    return 0 if response.status_code == 200 else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    mesh_status = client_arguments(
        sub.add_parser("status", help="the router's runtime instances and models, as tables")
    )
    mesh_status.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    mesh_status.set_defaults(func=_mesh_status)

    explain = client_arguments(
        sub.add_parser("explain", help="where a model is and why, its placement history, what a load would do now")
    )
    explain.add_argument("model")
    explain.add_argument("--json", action="store_true", help="the explanation as JSON, for scripts")
    explain.set_defaults(func=_explain)

    infer = sub.add_parser("infer", help="send one inference request over REST")
    infer.add_argument("model")
    infer.add_argument("--data", required=True, help='tensor data as JSON, e.g. "[[5.1, 3.5, 1.4, 0.2]]"')
    infer.add_argument("--datatype", help="v2 datatype (default FP32, or BYTES for strings)")
    infer.add_argument("--input-name", default="input-0")
    infer.add_argument("--rest", default="http://127.0.0.1:8008", help="the router's REST address")
    infer.add_argument("--timeout", type=float, default=120.0)
    tls_client_arguments(infer)
    infer.set_defaults(func=_infer)
