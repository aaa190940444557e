"""`mesh serve` with the native engine: HAProxy owns the public ports, mesh starts and stops it, and a user who asks
for an engine that is not there is told so."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import grpc
import httpx
from harness.serve import engine_children, serving

from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.processes import python_module_command

TIMEOUT_S = 30.0
IRIS_SETOSA = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]}


def _iris(address: str) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="iris-logreg")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=TIMEOUT_S)


def test_mesh_serve_runs_the_engine_on_the_public_ports_and_stops_it(tmp_path: Path, haproxy_binary: str) -> None:
    with serving(tmp_path, "--rest-port", "0", "--kv", "memory://", "--dataplane", "haproxy") as serve:
        [engine] = engine_children(serve.process.pid)
        listening = Path(f"/proc/{engine.pid}/net/tcp").read_text()
        assert f":{serve.grpc_port:04X} " in listening  # the engine's process holds the public port
        for _ in range(3):
            assert _iris(serve.grpc_address).outputs[0].name == "predict"
        with httpx.Client(base_url=serve.rest_url, timeout=TIMEOUT_S) as client:
            assert client.get("/v2/health/ready").status_code == 200
            answer = client.post("/v2/models/iris-logreg/infer", json=IRIS_SETOSA)
            assert answer.status_code == 200, answer.text
        assert "data plane: haproxy" in serve.log()
    deadline = time.monotonic() + 10
    while engine.alive():
        assert time.monotonic() < deadline, "the engine outlived mesh serve"
        time.sleep(0.05)


def test_the_engine_does_not_outlive_a_killed_mesh(tmp_path: Path, haproxy_binary: str) -> None:
    with serving(tmp_path, "--kv", "memory://", "--dataplane", "haproxy", "--no-examples") as serve:
        [engine] = engine_children(serve.process.pid)
        serve.process.kill()
        serve.process.wait(timeout=TIMEOUT_S)
        deadline = time.monotonic() + 10
        while engine.alive():
            assert time.monotonic() < deadline, "the engine outlived a SIGKILLed mesh serve (and holds its ports)"
            time.sleep(0.05)


def test_asking_for_an_engine_that_is_not_installed_is_a_usage_error(tmp_path: Path) -> None:
    command = [*python_module_command("mesh"), "serve", "--dataplane", "haproxy", "--grpc-port", "0"]
    env = {**os.environ, "MESH_HAPROXY_BINARY": str(tmp_path / "no-haproxy-here")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "dataplane 'haproxy' asked for, but" in done.stderr
    assert "Traceback" not in done.stderr
