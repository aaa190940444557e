"""`mesh serve` reaches its own runtimes over unix-domain sockets: registered as unix:PATH, inference goes through."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from harness.serve import serving

from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc

pytestmark = pytest.mark.slow  # a router and two runtime processes


def test_mesh_serve_registers_its_runtimes_by_unix_socket_and_infers_through_them(tmp_path: Path) -> None:
    # The Python data plane: with the native engine the runtimes are registered by TCP (the engine cannot be
    # pointed at a unix socket at run time; tests/engine/test_serve_engine.py).
    args = ("--runtimes", "2", "--kv", "memory://", "--rest-port", "-1", "--dataplane", "python")
    with serving(tmp_path, *args) as serve, grpc.insecure_channel(serve.grpc_address) as channel:
        request = pb.ModelInferRequest(model_name="echo")
        request.inputs.add(name="x", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"hi")
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert reply.model_name == "echo" and reply.raw_output_contents == [b"\x02\x00\x00\x00hi"]  # BYTES, raw

        listing = admin_grpc.MeshAdminStub(channel).ListInstances(admin.ListInstancesRequest(), timeout=30)
        endpoints = {i.instanceId: i.endpoint for i in listing.instances}
        assert sorted(endpoints) == ["runtime-0", "runtime-1"]
        for instance_id, endpoint in endpoints.items():
            assert endpoint.startswith("unix:/") and endpoint.endswith(f"/{instance_id}.sock")
            assert Path(endpoint.removeprefix("unix:")).is_socket()
        [holder] = [i for i in listing.instances if "echo" in i.models]
        assert holder.reachable
    sockets = [Path(e.removeprefix("unix:")) for e in endpoints.values()]
    assert not any(s.exists() for s in sockets)  # the runtimes and their workdir are gone
