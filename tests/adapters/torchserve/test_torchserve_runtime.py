"""The TorchServe adapter beside a real TorchServe (0.12, CPU torch, from the project's own venv), behind an
in-process router, driven with real gRPC clients: TorchServe's own Predictions API (a stub generated from
protos/torchserve-inference.proto) and its KServe v2 service, on a channel to the router.

The model is eager-mode PyTorch: a Linear(4, 3) class in model.py, its state_dict in model.pt, and a custom
handler; it is archived in the test with the venv's torch-model-archiver (the .mar case), or left as a folder
for the adapter to archive. One adapter (launching TorchServe with its v2 service on) and one router serve the
module; each test registers models of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as triton_aio
from harness.model_servers import AdapterProcess, MeshOverAdapter, mesh_over, start_adapter
from tiny_torch import X, Y, _handler, archive, write_parts
from tritonclient.utils import InferenceServerException

from adapters.common.envs import ensure_env
from adapters.torchserve.launch import LaunchedTorchServe, launch
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_runtime_pb2 as rt
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.gen import torchserve_inference_pb2 as ts
from mesh.gen import torchserve_inference_pb2_grpc as ts_grpc

pytestmark = pytest.mark.slow
in_module_loop = pytest.mark.asyncio(loop_scope="module")

LOAD_TIMEOUT_MS = 90_000
CALL_TIMEOUT_S = 60.0
START_TIMEOUT_S = 120.0


@dataclass
class Sources:
    parts: Path  # model.py + model.pt + handler.py: for the adapter to archive
    mar: Path  # the same parts archived here with torch-model-archiver
    described: Path  # the parts under other names, named by archive.json
    broken: Path  # parts whose handler raises in initialize
    counting: Path  # a .mar whose handler streams: for an input n, the numbers 0 .. n-1, one response each


@pytest.fixture(scope="module")
def torchserve_venv() -> Path:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("TorchServe needs Java 11+, and this machine has no `java` (install a JDK, e.g. openjdk-17)")
    return ensure_env("torchserve")  # a failed install fails the suite: the project's own files install it


@pytest.fixture(scope="module")
def sources(torchserve_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("sources")
    parts = write_parts(root / "parts", torchserve_venv)
    mar = archive(parts, torchserve_venv, root / "archives")

    described = root / "described"
    described.mkdir()
    shutil.copy(parts / "model.pt", described / "weights.bin.1")
    shutil.copy(parts / "model.py", described / "net.py")
    shutil.copy(parts / "handler.py", described / "serve.py")
    (described / "notes.txt").write_text("not part of the archive")
    spec = {"handler": "serve.py", "serialized_file": "weights.bin.1", "model_file": "net.py", "extra_files": []}
    (described / "archive.json").write_text(json.dumps(spec))

    broken = root / "broken"
    shutil.copytree(parts, broken)
    (broken / "handler.py").write_text(_handler('raise RuntimeError("broken on purpose")'))
    counting = root / "counting"
    shutil.copytree(parts, counting)
    (counting / "handler.py").write_text(textwrap.dedent(COUNTING_HANDLER))
    return Sources(parts, mar, described, broken, archive(counting, torchserve_venv, root / "archives", "counting"))


# Streams as TorchServe's StreamPredictions does: each intermediate response sent from the handler, the last one
# returned.
COUNTING_HANDLER = """
import json

from ts.handler_utils.utils import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler


class Counting(BaseHandler):
    def handle(self, data, context):
        n = int(json.loads(data[0].get("data") or data[0].get("body")))
        for i in range(n - 1):
            send_intermediate_predict_response([json.dumps(i)], context.request_ids, "Intermediate", 200, context)
        return [json.dumps(n - 1)]
"""


def _server_pids(adapter: AdapterProcess) -> list[int]:
    return [int(p) for p in re.findall(r"started torchserve \(pid (\d+)\)", adapter.log())]


def _kill_servers(adapter: AdapterProcess) -> None:
    """Kill, by process group, any TorchServe the adapter started that is still alive (an adapter killed mid-way
    leaves its server: the server runs in a session of its own)."""
    for pid in _server_pids(adapter):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def _adapter(workdir: Path, *args: str, instance_id: str = "torchserve-0") -> Iterator[AdapterProcess]:
    adapter = start_adapter(
        "torchserve",
        workdir,
        ["--models-dir", str(workdir / "models"), "--model-store", str(workdir / "store"),
         "--load-timeout-ms", str(LOAD_TIMEOUT_MS), "--max-loading-concurrency", "2", *args],
        instance_id=instance_id,
    )  # fmt: skip
    try:
        yield adapter
    finally:
        try:
            adapter.stop()
        finally:
            _kill_servers(adapter)


def _launch_args(venv: Path, workdir: Path) -> tuple[str, ...]:
    return ("--launch", "--server-venv", str(venv), "--server-dir", str(workdir / "server"))


def _management_url(server_dir: Path) -> str:
    config = (server_dir / "config.properties").read_text()
    return re.search(r"^management_address=(\S+)$", config, re.MULTILINE).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torchserve")


@pytest.fixture(scope="module")
def adapter(torchserve_venv: Path, workdir: Path) -> Iterator[AdapterProcess]:
    with _adapter(workdir, *_launch_args(torchserve_venv, workdir), "--open-inference-protocol") as started:
        yield started


MAR = "pytorch-mar"


@dataclass
class Mesh(MeshOverAdapter):
    management: httpx.AsyncClient  # TorchServe's own management API, to see what it holds

    @property
    def predictions(self) -> ts_grpc.InferenceAPIsServiceStub:
        """TorchServe's own inference API, through the router."""
        return ts_grpc.InferenceAPIsServiceStub(self.channel)

    async def predict(self, header: str, name: str, data: bytes) -> object:
        request = ts.PredictionsRequest(input={"data": data})
        response = await self.predictions.Predictions(request, metadata=((header, name),), timeout=CALL_TIMEOUT_S)
        return json.loads(response.prediction)

    async def torchserve_models(self) -> dict[str, str]:
        """TorchServe's registered models: name → url."""
        response = await self.management.get("/models")
        response.raise_for_status()
        return {m["modelName"]: m["modelUrl"] for m in response.json()["models"]}


@contextlib.asynccontextmanager
async def _mesh(workdir: Path, adapter: AdapterProcess, management_url: str) -> AsyncIterator[Mesh]:
    async with (
        mesh_over(workdir, adapter) as base,
        httpx.AsyncClient(base_url=management_url, timeout=CALL_TIMEOUT_S, trust_env=False) as management,
    ):
        yield Mesh(base.router, base.address, base.channel, management)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(workdir: Path, adapter: AdapterProcess) -> AsyncIterator[Mesh]:
    async with _mesh(workdir, adapter, _management_url(workdir / "server")) as started:
        yield started


@in_module_loop
async def test_a_mar_loads_on_first_request_and_answers_torchserves_own_predictions_api(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    await mesh.register("tiny-mar", MAR, sources.mar)
    assert (await mesh.status("tiny-mar")).status == mm.ModelStatusInfo.NOT_LOADED

    assert await mesh.predict("mm-model-id", "tiny-mar", json.dumps(X).encode()) == Y

    assert (await mesh.status("tiny-mar")).status == mm.ModelStatusInfo.LOADED
    assert (await mesh.torchserve_models())["tiny-mar"] == "tiny-mar.mar"
    link = workdir / "store" / "tiny-mar.mar"
    assert link.resolve() == (workdir / "models" / "tiny-mar" / "tiny.mar").resolve()
    # The size is the worker's memory (a Python process with torch: far more than the 2 kB on disk).
    assert mesh.router.registry.size_bytes("tiny-mar") > 50_000_000


@in_module_loop
async def test_a_vmodel_routes_predictions_to_its_model(mesh: Mesh, sources: Sources) -> None:
    await mesh.register("tiny-v1", MAR, sources.mar)
    request = mm.SetVModelRequest(vModelId="tiny", targetModelId="tiny-v1", sync=True)
    await mesh.admin.setVModel(request, timeout=CALL_TIMEOUT_S)

    assert await mesh.predict("mm-vmodel-id", "tiny", json.dumps(X).encode()) == Y


@in_module_loop
async def test_predictions_without_a_routing_header_are_routed_by_model_name(mesh: Mesh, sources: Sources) -> None:
    # As ModelMesh's dataplane config has it: Predictions' model_name is field 1, like ModelInfer's.
    await mesh.register("tiny-by-name", MAR, sources.mar)
    request = ts.PredictionsRequest(model_name="tiny-by-name", input={"data": json.dumps(X).encode()})
    reply = await mesh.predictions.Predictions(request, timeout=CALL_TIMEOUT_S)
    assert json.loads(reply.prediction) == Y


@in_module_loop
async def test_stream_predictions_relay_a_handlers_intermediate_responses(mesh: Mesh, sources: Sources) -> None:
    """TorchServe's server-side stream through mesh, named by the request's model_name (field 1) or a header."""
    await mesh.register("counting", MAR, sources.counting)
    by_name = ts.PredictionsRequest(model_name="counting", input={"data": b"4"})
    replies = mesh.predictions.StreamPredictions(by_name, timeout=CALL_TIMEOUT_S)
    assert [json.loads(r.prediction) async for r in replies] == [0, 1, 2, 3]
    by_header = ts.PredictionsRequest(input={"data": b"3"})
    replies = mesh.predictions.StreamPredictions(by_header, metadata=(("mm-model-id", "counting"),))
    assert [json.loads(r.prediction) async for r in replies] == [0, 1, 2]
    assert (await mesh.status("counting")).status == mm.ModelStatusInfo.LOADED


@in_module_loop
async def test_a_folder_of_parts_is_archived_by_the_adapter(mesh: Mesh, sources: Sources, workdir: Path) -> None:
    await mesh.register("tiny-parts", MAR, sources.parts)

    assert await mesh.predict("mm-model-id", "tiny-parts", json.dumps([0.0, 0.0, 0.0, 1.0]).encode()) == [3.5, 6, 13]

    assert (await mesh.torchserve_models())["tiny-parts"] == "tiny-parts"
    archived = workdir / "models" / "tiny-parts" / ".torchserve-archive" / "tiny-parts"
    assert (workdir / "store" / "tiny-parts").resolve() == archived.resolve()
    manifest = json.loads((archived / "MAR-INF" / "MANIFEST.json").read_text())["model"]
    assert (manifest["handler"], manifest["serializedFile"], manifest["modelFile"]) == (
        "handler.py",
        "model.pt",
        "model.py",
    )


@in_module_loop
async def test_archive_json_names_the_parts(mesh: Mesh, sources: Sources, workdir: Path) -> None:
    await mesh.register("tiny-described", MAR, sources.described)

    assert await mesh.predict("mm-model-id", "tiny-described", json.dumps(X).encode()) == Y

    archived = workdir / "models" / "tiny-described" / ".torchserve-archive" / "tiny-described"
    assert sorted(p.name for p in archived.iterdir()) == ["MAR-INF", "net.py", "serve.py", "weights.bin.1"]


@in_module_loop
async def test_an_unloaded_model_is_gone_from_torchserve_and_its_store(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    await mesh.register("to-unload", MAR, sources.mar)
    assert await mesh.predict("mm-model-id", "to-unload", json.dumps(X).encode()) == Y
    assert "to-unload" in await mesh.torchserve_models()

    await mesh.unregister("to-unload")

    assert "to-unload" not in await mesh.torchserve_models()
    assert not (workdir / "store" / "to-unload.mar").is_symlink()
    assert not (workdir / "models" / "to-unload").exists()


@in_module_loop
async def test_v2_inference_goes_through_torchserves_open_inference_service(mesh: Mesh, sources: Sources) -> None:
    await mesh.register("tiny-v2", MAR, sources.mar)
    request = pb.ModelInferRequest(
        id="r1",
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=X)
        )],
    )  # fmt: skip
    infer = mesh.channel.unary_unary(
        "/org.pytorch.serve.grpc.openinference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )

    response = await infer(request, metadata=(("mm-model-id", "tiny-v2"),), timeout=CALL_TIMEOUT_S)

    assert (response.model_name, response.id) == ("tiny-v2", "r1")
    assert list(response.outputs[0].contents.fp32_contents) == Y
    # KServe's own service name (what tritonclient calls) is not one TorchServe serves.
    async with triton_aio.InferenceServerClient(mesh.address) as triton:
        tensor = triton_aio.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([X], dtype=np.float32))
        with pytest.raises(InferenceServerException, match="(?i)unimplemented"):
            await triton.infer("tiny-v2", [tensor], client_timeout=CALL_TIMEOUT_S)


@in_module_loop
async def test_a_handlers_bad_input_error_reaches_the_client_and_the_copy_stays(mesh: Mesh, sources: Sources) -> None:
    await mesh.register("tiny-strict", MAR, sources.mar)
    assert await mesh.predict("mm-model-id", "tiny-strict", json.dumps(X).encode()) == Y

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await mesh.predict("mm-model-id", "tiny-strict", b"[1, 2")

    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "input is not JSON" in (failure.value.details() or "")
    assert (await mesh.status("tiny-strict")).status == mm.ModelStatusInfo.LOADED
    assert await mesh.predict("mm-model-id", "tiny-strict", json.dumps(X).encode()) == Y


@in_module_loop
async def test_a_handlers_unhandled_error_is_unavailable_and_leaves_the_copy_and_the_instance_in_routing(
    mesh: Mesh, sources: Sources
) -> None:
    # TorchServe answers a handler's uncaught exception UNAVAILABLE ("Prediction failed"), which also means "the
    # runtime is gone" to a router. The router sees the server still accepting connections and keeps both.
    await mesh.register("tiny-unhandled", MAR, sources.mar)
    assert await mesh.predict("mm-model-id", "tiny-unhandled", json.dumps(X).encode()) == Y

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await mesh.predict("mm-model-id", "tiny-unhandled", b"[6, 6, 6, 6]")

    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert (await mesh.status("tiny-unhandled")).status == mm.ModelStatusInfo.LOADED
    assert mesh.router.manager.health.reachable("torchserve-0")
    assert await mesh.predict("mm-model-id", "tiny-unhandled", json.dumps(X).encode()) == Y


@in_module_loop
async def test_a_handler_that_raises_in_initialize_fails_to_load_with_its_traceback(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    await mesh.register("broken", MAR, sources.broken)

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await mesh.predict("mm-model-id", "broken", json.dumps(X).encode())

    assert "TorchServe could not register model broken" in (failure.value.details() or "")
    status = await mesh.status("broken")
    assert status.status == mm.ModelStatusInfo.LOADING_FAILED
    assert any("RuntimeError: broken on purpose" in error for error in status.errors)
    assert "broken" not in await mesh.torchserve_models()
    assert not (workdir / "store" / "broken").is_symlink()


@in_module_loop
async def test_what_torchserve_cannot_load_is_refused_with_a_reason(adapter: AdapterProcess, workdir: Path) -> None:
    not_an_archive = workdir / "inputs" / "model.mar"
    not_an_archive.parent.mkdir(exist_ok=True)
    not_an_archive.write_text("not a zip")
    async with grpc.aio.insecure_channel(adapter.endpoint) as channel:
        spi = rt_grpc.ModelRuntimeStub(channel)
        cases = {
            "has space": (grpc.StatusCode.INVALID_ARGUMENT, "cannot name a TorchServe model"),
            "not-a-zip": (grpc.StatusCode.INTERNAL, "is not a .mar archive"),
        }
        for model_id, (code, message) in cases.items():
            request = rt.LoadModelRequest(modelId=model_id, modelType="pytorch-mar", modelPath=str(not_an_archive))
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await spi.loadModel(request, timeout=CALL_TIMEOUT_S)
            assert failure.value.code() is code
            assert message in (failure.value.details() or "")
            # Unloading what was never loaded is a no-op, as the router may unload twice.
            await spi.unloadModel(rt.UnloadModelRequest(modelId=model_id), timeout=CALL_TIMEOUT_S)


@pytest_asyncio.fixture(loop_scope="module")
async def running_torchserve(torchserve_venv: Path, tmp_path: Path) -> AsyncIterator[LaunchedTorchServe]:
    """A TorchServe started apart from any adapter, as in a pod where it is its own container."""
    started = await launch(torchserve_venv, tmp_path / "store", tmp_path / "server", 1, False, START_TIMEOUT_S)
    try:
        yield started
    finally:
        await started.process.stop()


@in_module_loop
async def test_connecting_to_a_running_torchserve_unregisters_what_it_held_then_serves(
    running_torchserve: LaunchedTorchServe, sources: Sources, tmp_path: Path
) -> None:
    shutil.copy(sources.mar, tmp_path / "store" / "leftover.mar")
    async with httpx.AsyncClient(base_url=running_torchserve.management_url, timeout=CALL_TIMEOUT_S) as management:
        params = {"url": "leftover.mar", "initial_workers": "1", "synchronous": "true"}
        (await management.post("/models", params=params)).raise_for_status()

        workdir = tmp_path / "adapter"
        args = ("--management-url", running_torchserve.management_url, "--torchserve-grpc",
                running_torchserve.grpc_address, "--model-store", str(tmp_path / "store"))  # fmt: skip
        with _adapter(workdir, *args, instance_id="torchserve-c") as connected:
            models = (await management.get("/models")).json()["models"]
            assert models == [], "the adapter starts its server empty, as the SPI requires"
            assert not (tmp_path / "store" / "leftover.mar").exists()

            async with _mesh(workdir, connected, running_torchserve.management_url) as mesh:
                record = mesh.router.manager.view.instances["torchserve-c"].record
                assert record.data_endpoint == running_torchserve.grpc_address
                await mesh.register("tiny", MAR, sources.mar)
                assert await mesh.predict("mm-model-id", "tiny", json.dumps(X).encode()) == Y


def _group_commands(pgid: int) -> list[str]:
    """The command names (python for the launcher and the workers, java) of a process group's live members."""
    table = subprocess.run(["ps", "-e", "-o", "pgid=,stat=,comm="], capture_output=True, text=True, check=True)
    rows = [line.split(None, 2) for line in table.stdout.splitlines()]
    return [re.sub(r"[0-9.]+$", "", comm) for group, stat, comm in rows if int(group) == pgid and "Z" not in stat]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stopping_the_adapter_stops_torchserve_its_jvm_and_workers(adapter: AdapterProcess, sources: Sources) -> None:
    """Last in the module: it stops the module's adapter."""
    with grpc.insecure_channel(adapter.endpoint) as channel:  # a worker to stop too (at once if already loaded)
        request = rt.LoadModelRequest(modelId="tiny-mar", modelType="pytorch-mar", modelPath=str(sources.mar))
        rt_grpc.ModelRuntimeStub(channel).loadModel(request, timeout=CALL_TIMEOUT_S)
    [pgid] = _server_pids(adapter)
    assert {"java", "python"} <= set(_group_commands(pgid))

    assert adapter.stop() == 0

    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(pgid), f"a process of TorchServe's group outlived the adapter: {_group_commands(pgid)}"
