"""A real `mesh serve` under concurrent first requests and a runtime that dies: requests keep succeeding."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from harness.serve import ServeProcess

from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc

TIMEOUT_S = 30.0
RESTART_TIMEOUT_S = 20.0
SETOSA = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)

pytestmark = pytest.mark.slow  # one shared `mesh serve`: a router and two runtime processes


def _predict(address: str, model: str) -> list[int]:
    client = grpcclient.InferenceServerClient(address)
    try:
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(SETOSA)
        return client.infer(model, [tensor], client_timeout=TIMEOUT_S).as_numpy("predict").tolist()
    finally:
        client.close()


def test_concurrent_first_requests_share_one_load(mesh_server: ServeProcess) -> None:
    # iris-forest is used by no other test, so its first load happens here.
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda _: _predict(mesh_server.grpc_address, "iris-forest"), range(24)))
    assert results == [[0]] * 24
    assert mesh_server.log().count("loaded model iris-forest on ") == 1


def test_requests_survive_a_runtime_killed_under_them(mesh_server: ServeProcess, channel: grpc.Channel) -> None:
    management = mm_grpc.ModelMeshStub(channel)
    status = management.ensureLoaded(mm.EnsureLoadedRequest(modelId="iris-tree", sync=True), timeout=TIMEOUT_S)
    [instance_id] = [c.location for c in status.modelCopyInfos if c.copyStatus == mm.ModelStatusInfo.LOADED]
    victim = mesh_server.runtime(instance_id)
    assert victim is not None, f"no process for {instance_id}"

    os.kill(victim.pid, signal.SIGKILL)

    # The copy on the dead runtime is dropped and the model loaded again elsewhere, within the same requests.
    for _ in range(3):
        assert _predict(mesh_server.grpc_address, "iris-tree") == [0]
    # The supervisor starts a fresh process for the instance.
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while (replacement := mesh_server.runtime(instance_id)) is None or replacement == victim:
        assert time.monotonic() < deadline, f"{instance_id} was not restarted within {RESTART_TIMEOUT_S:.0f} s"
        time.sleep(0.1)
    assert not victim.alive()
