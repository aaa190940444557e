"""The Triton adapter beside a real tritonserver, behind an in-process router, driven with tritonclient's
unmodified gRPC client.

The server is the pip build in nvidia-pytriton (python backend only), or, with MESH_TRITON_HOME naming a full
build's folder (NGC's image: /opt/tritonserver), that build: then the ONNX, TorchScript and TensorFlow models run
too (each skips, saying so, on a build without its backend).

One adapter (launching its server) and one router serve the module; each test registers models of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as triton_aio
from backend_models import expected, onnx_model, saved_model, torchscript_model
from harness.model_servers import AdapterProcess, MeshOverAdapter, mesh_over, start_adapter
from tritonclient.utils import InferenceServerException

from adapters.common.envs import ensure_env
from adapters.triton import layout
from adapters.triton.launch import LaunchedTriton, TritonInstall, launch
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_runtime_pb2 as rt
from mesh.gen import model_runtime_pb2_grpc as rt_grpc

pytestmark = pytest.mark.slow
in_module_loop = pytest.mark.asyncio(loop_scope="module")

LOAD_TIMEOUT_MS = 60_000
CALL_TIMEOUT_S = 60.0
TRITON_HOME = os.environ.get("MESH_TRITON_HOME", "")
"""A full Triton build to run the suite against; unset, the venv's pip build."""

# y = factor · x over FP32 [-1, 4]; inputs and outputs declared by the model itself (auto_complete_config), so a
# folder holding only this file needs nothing but the `backend: "python"` config the adapter writes.
SCALE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

FACTOR = {factor}


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}})
        config.add_output({{"name": "y", "data_type": "TYPE_FP32", "dims": [-1, 4]}})
        config.set_max_batch_size(0)
        return config

    def initialize(self, args):
        {initialize}

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x * FACTOR).astype(np.float32))]))
        return responses
"""

# The model's own config, naming it differently from its mesh id (the adapter must drop that name).
NATIVE_CONFIG = """
name: "named-otherwise"
backend: "python"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
"""


# A decoupled model (Triton's streaming kind): for an input n it sends n responses, i = 0 .. n-1, then its final flag.
DECOUPLED_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "n" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "i" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
DECOUPLED_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "n").as_numpy()[0])
            sender = request.get_response_sender()
            for i in range(n):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("i", np.array([i], dtype=np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def _scale_model(factor: float, initialize: str = "pass") -> str:
    return textwrap.dedent(SCALE_MODEL).format(factor=factor, initialize=initialize)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass
class Sources:
    double: Path  # a folder holding model.py: y = 2x
    versioned: Path  # config.pbtxt (named otherwise) + 1/model.py (2x) + 2/model.py (3x)
    broken: Path  # a single model.py whose initialize raises
    bad_config: Path  # a config.pbtxt Triton cannot parse
    counter: Path  # a decoupled model: n responses for an input n


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("sources")
    _write(root / "double" / "model.py", _scale_model(2))
    _write(root / "versioned" / "config.pbtxt", NATIVE_CONFIG)
    _write(root / "versioned" / "1" / "model.py", _scale_model(2))
    _write(root / "versioned" / "2" / "model.py", _scale_model(3))
    broken = _write(root / "broken" / "model.py", _scale_model(1, 'raise RuntimeError("broken on purpose")'))
    _write(root / "bad_config" / "config.pbtxt", 'backend: "python"\nno_such_field: 1\n')
    _write(root / "bad_config" / "1" / "model.py", _scale_model(2))
    _write(root / "counter" / "config.pbtxt", DECOUPLED_CONFIG)
    _write(root / "counter" / "1" / "model.py", textwrap.dedent(DECOUPLED_MODEL))
    return Sources(root / "double", root / "versioned", broken, root / "bad_config", root / "counter")


@pytest.fixture(scope="module")
def triton_install() -> TritonInstall:
    """The build the suite launches: MESH_TRITON_HOME's, else the venv's pip build (a failed install fails the
    suite: the project's own files install it)."""
    return TritonInstall.at_home(Path(TRITON_HOME)) if TRITON_HOME else TritonInstall.find(ensure_env("triton"))


def _launch_args(install: TritonInstall, server_dir: Path) -> tuple[str, ...]:
    chosen = ("--server-venv", str(install.venv)) if install.venv else ("--triton-home", str(install.root))
    return ("--launch", *chosen, "--server-dir", str(server_dir))


def _kill_tritonservers(adapter: AdapterProcess) -> None:
    """Kill, by pid, any tritonserver the adapter started that is still alive (an adapter killed mid-way leaves
    its server: the server runs in a session of its own)."""
    for pid in map(int, re.findall(r"started tritonserver \(pid (\d+)\)", adapter.log())):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def _adapter(workdir: Path, *args: str, instance_id: str = "triton-0") -> Iterator[AdapterProcess]:
    adapter = start_adapter(
        "triton",
        workdir,
        ["--models-dir", str(workdir / "models"), "--model-repository", str(workdir / "repository"),
         "--load-timeout-ms", str(LOAD_TIMEOUT_MS), "--max-loading-concurrency", "2", *args],
        instance_id=instance_id,
    )  # fmt: skip
    try:
        yield adapter
    finally:
        try:
            adapter.stop()
        finally:
            _kill_tritonservers(adapter)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("triton")


@pytest.fixture(scope="module")
def adapter(triton_install: TritonInstall, workdir: Path) -> Iterator[AdapterProcess]:
    with _adapter(workdir, *_launch_args(triton_install, workdir / "server")) as started:
        yield started


@dataclass
class Mesh(MeshOverAdapter):
    triton: triton_aio.InferenceServerClient  # through the router
    direct: triton_aio.InferenceServerClient  # Triton's own gRPC port, to see what it holds

    async def infer(self, model_id: str, x: np.ndarray, names: tuple[str, str] = ("x", "y")) -> np.ndarray:
        tensor = triton_aio.InferInput(names[0], list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = await self.triton.infer(model_id, [tensor], client_timeout=CALL_TIMEOUT_S)
        return result.as_numpy(names[1])

    async def triton_models(self) -> dict[str, str]:
        """Triton's repository index: model name → state (empty for a model it has only found on disk)."""
        index = await self.direct.get_model_repository_index(as_json=True)
        return {m["name"]: m.get("state", "") for m in index.get("models", [])}


@contextlib.asynccontextmanager
async def _mesh(workdir: Path, adapter: AdapterProcess) -> AsyncIterator[Mesh]:
    async with mesh_over(workdir, adapter) as base:
        through = triton_aio.InferenceServerClient(base.address)
        direct = triton_aio.InferenceServerClient(base.data_endpoint(adapter))
        try:
            yield Mesh(base.router, base.address, base.channel, through, direct)
        finally:
            await through.close()
            await direct.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(workdir: Path, adapter: AdapterProcess) -> AsyncIterator[Mesh]:
    async with _mesh(workdir, adapter) as started:
        yield started


X = np.arange(8, dtype=np.float32).reshape(2, 4)


@in_module_loop
async def test_a_python_model_loads_on_first_request_and_infers_through_the_router(
    mesh: Mesh, sources: Sources, workdir: Path, triton_install: TritonInstall
) -> None:
    # The types offered to the router are those of the launched build's backends (the pip build's: python).
    offered = tuple(t for t in layout.MODEL_TYPES if layout.BACKENDS[t] in triton_install.backends())
    assert mesh.router.manager.view.instances["triton-0"].record.model_types == offered
    assert TRITON_HOME or offered == ("python",)
    await mesh.register("double", "python", sources.double)
    assert (await mesh.status("double")).status == mm.ModelStatusInfo.NOT_LOADED

    np.testing.assert_array_equal(await mesh.infer("double", X), X * 2)

    assert (await mesh.status("double")).status == mm.ModelStatusInfo.LOADED
    assert (await mesh.triton_models())["double"] == "READY"
    folder = workdir / "repository" / "double"
    assert (folder / "config.pbtxt").read_text() == 'backend: "python"\n'
    pulled = workdir / "models" / "double" / "double" / "model.py"
    assert (folder / "1" / "model.py").resolve() == pulled.resolve()
    metadata = await mesh.triton.get_model_metadata("double", as_json=True)
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    # Its size is its python stub process, measured (tens of MB), not its 1 kB on disk.
    assert 5_000_000 < await mesh.size("double") < 500_000_000


@in_module_loop
async def test_a_decoupled_models_responses_stream_through_the_router(mesh: Mesh, sources: Sources) -> None:
    await mesh.register("counter", "python", sources.counter)
    n = triton_aio.InferInput("n", [1], "INT32")
    n.set_data_from_numpy(np.array([5], dtype=np.int32))

    async def requests() -> AsyncIterator[dict]:
        yield {"model_name": "counter", "inputs": [n]}

    counted = []
    async for result, error in mesh.triton.stream_infer(requests(), stream_timeout=CALL_TIMEOUT_S):
        assert error is None, error
        counted.append(int(result.as_numpy("i")[0]))
    assert counted == [0, 1, 2, 3, 4]
    assert (await mesh.status("counter")).status == mm.ModelStatusInfo.LOADED


@in_module_loop
async def test_an_unloaded_model_is_gone_from_tritons_index_and_repository(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    await mesh.register("to-unload", "python", sources.double)
    np.testing.assert_array_equal(await mesh.infer("to-unload", X), X * 2)
    assert (await mesh.triton_models())["to-unload"] == "READY"

    await mesh.unregister("to-unload")

    assert "to-unload" not in await mesh.triton_models()
    assert not (workdir / "repository" / "to-unload").exists()
    assert not (workdir / "models" / "to-unload").exists()


@in_module_loop
async def test_a_model_with_its_own_config_serves_its_highest_version_under_its_mesh_id(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    await mesh.register("versioned", "python", sources.versioned)

    np.testing.assert_array_equal(await mesh.infer("versioned", X), X * 3)

    metadata = await mesh.triton.get_model_metadata("versioned", as_json=True)
    assert (metadata["name"], metadata["versions"]) == ("versioned", ["2"])
    config = (workdir / "repository" / "versioned" / "config.pbtxt").read_text()
    assert "named-otherwise" not in config
    assert 'name: "x"' in config and 'name: "y"' in config


@in_module_loop
async def test_a_model_that_raises_in_initialize_fails_to_load_with_tritons_message(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    await mesh.register("broken", "python", sources.broken)

    with pytest.raises(InferenceServerException, match="broken on purpose") as failure:
        await mesh.infer("broken", X)

    assert "Triton could not load model broken" in str(failure.value)
    status = await mesh.status("broken")
    assert status.status == mm.ModelStatusInfo.LOADING_FAILED
    assert any("RuntimeError: broken on purpose" in error for error in status.errors)
    assert "broken" not in await mesh.triton_models()
    assert not (workdir / "repository" / "broken").exists()


@in_module_loop
async def test_a_config_triton_cannot_read_fails_with_the_reason_from_tritons_log(mesh: Mesh, sources: Sources) -> None:
    await mesh.register("bad-config", "python", sources.bad_config)

    with pytest.raises(InferenceServerException) as failure:
        await mesh.infer("bad-config", X)

    # Triton's answer is only "failed to poll from model repository"; the launched server's log says why.
    assert "failed to poll" in str(failure.value)
    assert "Poll failed for model directory 'bad-config': failed to read text proto" in str(failure.value)


@in_module_loop
async def test_a_model_id_triton_cannot_name_is_refused_before_anything_is_pulled(
    mesh: Mesh, adapter: AdapterProcess, sources: Sources, workdir: Path
) -> None:
    async with grpc.aio.insecure_channel(adapter.endpoint) as channel:
        spi = rt_grpc.ModelRuntimeStub(channel)
        request = rt.LoadModelRequest(modelId="has space", modelType="python", modelPath=str(sources.double))
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await spi.loadModel(request, timeout=CALL_TIMEOUT_S)
        assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot name a Triton model" in (failure.value.details() or "")
        # Unloading a name Triton can't hold is a no-op, like any model it does not have.
        await spi.unloadModel(rt.UnloadModelRequest(modelId="has space"), timeout=CALL_TIMEOUT_S)
    assert "has space" not in await mesh.triton_models()
    assert not [p for p in (workdir / "models").iterdir() if "space" in p.name]


@in_module_loop
@pytest.mark.parametrize("model_type", ["onnx", "pytorch", "tensorflow"])
async def test_a_model_of_each_backend_loads_and_infers_through_the_router(
    mesh: Mesh, triton_install: TritonInstall, tmp_path: Path, model_type: str
) -> None:
    """ONNX (Triton completes its config), TorchScript (with its own config, INPUT__0 / OUTPUT__0) and a TensorFlow
    SavedModel: the same y = x·Wᵀ + b in each."""
    backend = layout.BACKENDS[model_type]
    if backend not in triton_install.backends():
        pytest.skip(
            f"this Triton build has no {backend} backend (the pip build has only python): set MESH_TRITON_HOME to a"
            " full build's folder, e.g. /opt/tritonserver in NGC's tritonserver image"
        )
    names = ("x", "y")
    if model_type == "onnx":
        source = onnx_model(tmp_path / "onnx")
    elif model_type == "pytorch":
        source, names = torchscript_model(tmp_path / "torchscript", ensure_env("torchserve")), ("INPUT__0", "OUTPUT__0")
    else:
        pytest.importorskip("tensorflow", reason="making a SavedModel needs tensorflow in the test's Python")
        source = saved_model(tmp_path / "tf")
    model_id = f"linear-{model_type}"
    await mesh.register(model_id, model_type, source)
    np.testing.assert_allclose(await mesh.infer(model_id, X, names), expected(X), rtol=1e-6)
    assert (await mesh.status(model_id)).status == mm.ModelStatusInfo.LOADED
    assert (await mesh.triton_models())[model_id] == "READY"


def test_the_torchscript_model_computes_what_the_backend_test_expects(tmp_path: Path) -> None:
    """Checked here without Triton's PyTorch backend, so the test above, where it runs, tests Triton alone."""
    torch_venv = ensure_env("torchserve")
    folder = torchscript_model(tmp_path / "torchscript", torch_venv)
    run = "import sys, torch; print(torch.jit.load(sys.argv[1])(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).tolist())"
    out = subprocess.run([str(torch_venv / "bin" / "python"), "-c", run, str(folder / "1" / "model.pt")],
                         check=True, capture_output=True, text=True, timeout=120)  # fmt: skip
    np.testing.assert_allclose(json.loads(out.stdout), expected(np.array([[1.0, 2.0, 3.0, 4.0]])), rtol=1e-6)


@pytest_asyncio.fixture(loop_scope="module")
async def running_triton(triton_install: TritonInstall, tmp_path: Path) -> AsyncIterator[LaunchedTriton]:
    """A tritonserver started apart from any adapter, as in a pod where it is its own container."""
    started = await launch(triton_install, tmp_path / "repository", tmp_path / "server", (), timeout=120)
    try:
        yield started
    finally:
        await started.process.stop()


@in_module_loop
async def test_connecting_to_a_running_triton_unloads_what_it_held_then_serves(
    running_triton: LaunchedTriton, sources: Sources, tmp_path: Path
) -> None:
    leftover = tmp_path / "repository" / "leftover"
    _write(leftover / "config.pbtxt", NATIVE_CONFIG.replace('name: "named-otherwise"', ""))
    _write(leftover / "1" / "model.py", _scale_model(2))
    async with triton_aio.InferenceServerClient(running_triton.grpc_address) as direct:
        await direct.load_model("leftover")
        assert await direct.is_model_ready("leftover")

        workdir = tmp_path / "adapter"
        args = ("--triton-http", running_triton.http_url, "--triton-grpc", running_triton.grpc_address)
        with _adapter(workdir, *args, "--model-repository", str(tmp_path / "repository"), instance_id="triton-c") as a:
            index = await direct.get_model_repository_index(as_json=True)
            assert index.get("models", []) == [], "the adapter starts its server empty, as the SPI requires"
            assert not leftover.exists()

            async with _mesh(workdir, a) as mesh:
                assert (
                    mesh.router.manager.view.instances["triton-c"].record.data_endpoint == running_triton.grpc_address
                )
                await mesh.register("double", "python", sources.double)
                np.testing.assert_array_equal(await mesh.infer("double", X), X * 2)
                assert await direct.is_model_ready("double")


def test_the_adapter_stops_the_tritonserver_it_launched(triton_install: TritonInstall, tmp_path: Path) -> None:
    with _adapter(tmp_path, *_launch_args(triton_install, tmp_path / "s")) as a:
        pids = [int(p) for p in re.findall(r"started tritonserver \(pid (\d+)\)", a.log())]
        assert len(pids) == 1
        assert a.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
