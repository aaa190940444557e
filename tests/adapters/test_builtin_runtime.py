"""The built-in runtime as a real subprocess on 127.0.0.1:0, driven over real gRPC with the example models."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import grpc
import joblib
import numpy as np
import pytest
import yaml
from harness.serve import EXAMPLE_MODELS
from sklearn.datasets import load_iris

from mesh.codec import numpy_to_response, outputs_to_numpy
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import model_runtime_pb2 as rt
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.processes import python_module_command

REPO = Path(__file__).resolve().parents[2]


def _import_build_models() -> ModuleType:
    """examples/build_models.py by path: `examples` is a folder of the repo, not part of the installed package."""
    spec = importlib.util.spec_from_file_location("build_models", REPO / "examples" / "build_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from examples.build_models import ExampleModel, build_examples
else:
    _build_models = _import_build_models()
    ExampleModel, build_examples = _build_models.ExampleModel, _build_models.build_examples
CAPACITY = 3_000_000
STARTUP_TIMEOUT_S = 30.0


@dataclass
class RuntimeProcess:
    process: subprocess.Popen[bytes]
    port: int
    port_file: Path
    log_file: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")


def _start_runtime(directory: Path, *extra: str) -> RuntimeProcess:
    """Starts `python -m adapters.builtin` on port 0 and waits for the port file it writes once serving."""
    directory.mkdir(parents=True, exist_ok=True)
    port_file, log_file = directory / "port.json", directory / "runtime.log"
    command = [
        *python_module_command("adapters.builtin"),
        *("--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)),
        *("--capacity-bytes", str(CAPACITY), "--instance-id", "test-builtin"),
        *("--max-loading-concurrency", "3", "--load-timeout-ms", "20000"),
        *extra,
    ]
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not port_file.exists():
            if process.poll() is not None:
                raise RuntimeError(f"runtime exited with {process.returncode}:\n{log_file.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"runtime wrote no port file in {STARTUP_TIMEOUT_S} s:\n{log_file.read_text()}")
            time.sleep(0.02)
        port = json.loads(port_file.read_text())["port"]
    except BaseException:
        _kill(process)
        raise
    return RuntimeProcess(process, port, port_file, log_file)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    started = _start_runtime(tmp_path_factory.mktemp("runtime"))
    try:
        yield started
    finally:
        _kill(started.process)


@pytest.fixture
def start_runtime(tmp_path: Path) -> Iterator[Callable[..., RuntimeProcess]]:
    """Starts a private runtime for a test that stops or breaks it; every one is killed at teardown."""
    started: list[RuntimeProcess] = []

    def start(*extra: str) -> RuntimeProcess:
        started.append(_start_runtime(tmp_path / f"runtime-{len(started)}", *extra))
        return started[-1]

    try:
        yield start
    finally:
        for runtime_process in started:
            _kill(runtime_process.process)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExampleModel]:
    return {example.model_id: example for example in build_examples(tmp_path_factory.mktemp("examples"))}


@dataclass
class Stubs:
    spi: rt_grpc.ModelRuntimeStub
    inference: pb_grpc.GRPCInferenceServiceStub


@pytest.fixture
async def stubs(runtime: RuntimeProcess) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        yield Stubs(rt_grpc.ModelRuntimeStub(channel), pb_grpc.GRPCInferenceServiceStub(channel))


def infer_request(model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] = ()) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying `inputs` as raw contents, encoded by the codec."""
    # The codec encodes numpy as v2 tensors for responses; an input tensor has the same fields.
    encoded = numpy_to_response(model, inputs)
    request = pb.ModelInferRequest(model_name=model, id="request-1")
    for tensor in encoded.outputs:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    request.raw_input_contents.extend(encoded.raw_output_contents)
    for name in outputs:
        request.outputs.add(name=name)
    return request


async def load(stubs: Stubs, model_id: str, model_type: str, path: Path | str) -> int:
    request = rt.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=str(path))
    return (await stubs.spi.loadModel(request, timeout=20)).sizeInBytes


async def load_example(stubs: Stubs, example: ExampleModel, model_id: str | None = None) -> int:
    return await load(stubs, model_id or example.model_id, example.model_type, example.path)


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    """The error a call ends with (failing the test if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def iris_rows() -> np.ndarray:
    return load_iris().data[::7]


# ---------------------------------------------------------------------------------------------------------------
# Process lifecycle and runtimeStatus


def test_port_file_names_the_serving_port_and_pid(runtime: RuntimeProcess) -> None:
    announced = json.loads(runtime.port_file.read_text())
    assert announced["pid"] == runtime.process.pid
    assert announced["port"] == runtime.port > 0
    assert announced["instance_id"] == "test-builtin"


async def test_runtime_status_reports_settings_and_forwarded_methods(stubs: Stubs) -> None:
    status = await stubs.spi.runtimeStatus(rt.RuntimeStatusRequest())
    assert status.status == rt.RuntimeStatusResponse.READY
    assert status.capacityInBytes == CAPACITY
    assert status.maxLoadingConcurrency == 3
    assert status.modelLoadingTimeoutMs == 20000
    assert status.defaultModelSizeInBytes > 0
    assert status.runtimeVersion.startswith("mesh-builtin-runtime/")
    assert set(status.methodInfos) == {
        "inference.GRPCInferenceService/ModelInfer",
        "inference.GRPCInferenceService/ModelMetadata",
        "inference.GRPCInferenceService/ModelStreamInfer",
    }
    assert all(list(info.idInjectionPath) == [1] for info in status.methodInfos.values())


async def test_runtime_status_purges_loaded_models(stubs: Stubs, examples: dict[str, ExampleModel]) -> None:
    await load_example(stubs, examples["echo"], "purged-echo")
    assert (await stubs.inference.ModelReady(pb.ModelReadyRequest(name="purged-echo"))).ready
    await stubs.spi.runtimeStatus(rt.RuntimeStatusRequest())
    assert not (await stubs.inference.ModelReady(pb.ModelReadyRequest(name="purged-echo"))).ready


async def test_server_level_inference_calls_answer(stubs: Stubs) -> None:
    assert (await stubs.inference.ServerLive(pb.ServerLiveRequest())).live
    assert (await stubs.inference.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stubs.inference.ServerMetadata(pb.ServerMetadataRequest())).name == "mesh-builtin-runtime"


async def test_sigterm_stops_gracefully_and_removes_the_port_file(start_runtime: Callable[..., RuntimeProcess]) -> None:
    private = start_runtime()
    private.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(private.process.wait, 10) == 0
    assert not private.port_file.exists()
    assert "stopped" in private.log()


async def test_a_runtime_given_uds_also_serves_on_that_unix_socket_and_removes_it_on_stop(
    start_runtime: Callable[..., RuntimeProcess],
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mesh-uds-"))  # short: a socket path must fit in 108 bytes
    try:
        socket_path = workdir / "rt.sock"
        private = start_runtime("--uds", str(socket_path))
        announced = json.loads(private.port_file.read_text())
        assert announced["uds"] == f"unix:{socket_path.resolve()}" and announced["port"] == private.port
        async with grpc.aio.insecure_channel(announced["uds"]) as channel:
            status = await rt_grpc.ModelRuntimeStub(channel).runtimeStatus(rt.RuntimeStatusRequest(), timeout=10)
            assert status.status == rt.RuntimeStatusResponse.READY
        private.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(private.process.wait, 10) == 0
        assert not socket_path.exists()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_runtime_stops_when_its_parent_pid_is_gone(start_runtime: Callable[..., RuntimeProcess]) -> None:
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        private = start_runtime("--parent-pid", str(stand_in.pid))
        time.sleep(0.2)
        assert private.process.poll() is None
    finally:
        _kill(stand_in)
    assert private.process.wait(10) == 0
    assert "parent process" in private.log()


# ---------------------------------------------------------------------------------------------------------------
# The SPI: load, size, unload


EXAMPLE_IDS = list(EXAMPLE_MODELS)


def test_models_yaml_lists_what_build_examples_writes(examples: dict[str, ExampleModel]) -> None:
    listed = yaml.safe_load((REPO / "examples" / "models.yaml").read_text())["models"]
    assert [entry["id"] for entry in listed] == EXAMPLE_IDS == list(examples)
    dest = examples["echo"].path.parent
    for entry in listed:
        example = examples[entry["id"]]
        assert entry["type"] == example.model_type
        assert example.path == dest / entry["path"]


@pytest.mark.parametrize("model_id", EXAMPLE_IDS)
async def test_load_reports_measured_size_until_unloaded(
    stubs: Stubs, runtime: RuntimeProcess, examples: dict[str, ExampleModel], model_id: str
) -> None:
    example = examples[model_id]
    predicted = await stubs.spi.predictModelSize(
        rt.PredictModelSizeRequest(modelId=model_id, modelType=example.model_type, modelPath=str(example.path))
    )
    size = await load_example(stubs, example)
    assert 0 < size <= predicted.sizeInBytes, "predictModelSize must be conservative"
    assert (await stubs.spi.modelSize(rt.ModelSizeRequest(modelId=model_id))).sizeInBytes == size
    assert (await stubs.inference.ModelReady(pb.ModelReadyRequest(name=model_id))).ready
    assert await load_example(stubs, example) == size, "loading a loaded model is a no-op"
    assert f"loaded model {model_id} " in runtime.log()

    await stubs.spi.unloadModel(rt.UnloadModelRequest(modelId=model_id))
    assert not (await stubs.inference.ModelReady(pb.ModelReadyRequest(name=model_id))).ready
    error = await rpc_error(stubs.spi.modelSize(rt.ModelSizeRequest(modelId=model_id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_unload_of_an_unknown_model_succeeds(stubs: Stubs) -> None:
    await stubs.spi.unloadModel(rt.UnloadModelRequest(modelId="never-loaded"))
    await stubs.spi.unloadModel(rt.UnloadModelRequest(modelId="never-loaded"))


async def test_concurrent_loads_of_one_model_share_one_load(
    stubs: Stubs, runtime: RuntimeProcess, examples: dict[str, ExampleModel]
) -> None:
    sizes = await asyncio.gather(*(load_example(stubs, examples["iris-forest"], "shared-forest") for _ in range(5)))
    assert len(set(sizes)) == 1
    assert runtime.log().count("loaded model shared-forest ") == 1


async def test_predict_model_size_of_a_missing_file_is_failed_precondition(stubs: Stubs, tmp_path: Path) -> None:
    missing = tmp_path / "absent.joblib"
    request = rt.PredictModelSizeRequest(modelId="m", modelType="sklearn", modelPath=str(missing))
    error = await rpc_error(stubs.spi.predictModelSize(request))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(missing) in (error.details() or "")


# ---------------------------------------------------------------------------------------------------------------
# Load failures: each with its status, and none of them takes the process down


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("model_type", "make_path", "code", "message"),
    [
        ("tensorflow", lambda d, e: e["echo"].path, grpc.StatusCode.INVALID_ARGUMENT, "unsupported modelType"),
        ("sklearn", lambda d, e: d / "absent.joblib", grpc.StatusCode.FAILED_PRECONDITION, "absent.joblib"),
        ("sklearn", lambda d, e: d, grpc.StatusCode.FAILED_PRECONDITION, "model.joblib"),
        (
            "sklearn",
            lambda d, e: _write(d / "garbage.joblib", b"\x80\x05this is not a pickle"),
            grpc.StatusCode.INTERNAL,
            "failed to load sklearn model from",
        ),
        (
            "sklearn",
            lambda d, e: _write(d / "cut.joblib", (e["iris-forest"].path / "model.joblib").read_bytes()[:5000]),
            grpc.StatusCode.INTERNAL,
            "failed to load sklearn model from",
        ),
        (
            "sklearn",
            lambda d, e: _write(d / "dict.joblib", b"\x80\x04}\x94."),  # a pickled empty dict
            grpc.StatusCode.INTERNAL,
            "has no predict method",
        ),
        (
            "text",
            lambda d, e: _write(d / "shout.json", b'{"transform": "shout"}'),
            grpc.StatusCode.INTERNAL,
            "unknown transform 'shout'",
        ),
        (
            "echo",
            lambda d, e: _write(d / "broken.json", b"{not json"),
            grpc.StatusCode.INTERNAL,
            "failed to load echo model from",
        ),
    ],
    ids=[
        "unknown-type",
        "missing-file",
        "dir-without-model",
        "garbage",
        "truncated",
        "not-an-estimator",
        "unknown-transform",
        "bad-json",
    ],
)
async def test_a_bad_load_fails_with_its_status_and_the_runtime_keeps_serving(
    stubs: Stubs,
    runtime: RuntimeProcess,
    examples: dict[str, ExampleModel],
    tmp_path: Path,
    model_type: str,
    make_path: Callable[[Path, dict[str, ExampleModel]], Path],
    code: grpc.StatusCode,
    message: str,
) -> None:
    path = make_path(tmp_path, examples)
    error = await rpc_error(load(stubs, "broken", model_type, path))
    assert error.code() == code
    assert message in (error.details() or "")
    if code != grpc.StatusCode.INVALID_ARGUMENT:
        assert str(path) in (error.details() or "")

    assert runtime.process.poll() is None
    assert "Traceback" not in runtime.log()
    assert not (await stubs.inference.ModelReady(pb.ModelReadyRequest(name="broken"))).ready
    await load_example(stubs, examples["echo"], "after-broken")
    response = await stubs.inference.ModelInfer(infer_request("after-broken", {"x": np.arange(3)}))
    np.testing.assert_array_equal(outputs_to_numpy(response)["x"], np.arange(3))


async def test_a_load_past_the_timeout_is_deadline_exceeded(
    start_runtime: Callable[..., RuntimeProcess], examples: dict[str, ExampleModel]
) -> None:
    # The first sklearn load imports scikit-learn, which takes far longer than 1 ms.
    private = start_runtime("--load-timeout-ms", "1")
    async with grpc.aio.insecure_channel(private.address) as channel:
        stubs = Stubs(rt_grpc.ModelRuntimeStub(channel), pb_grpc.GRPCInferenceServiceStub(channel))
        error = await rpc_error(load_example(stubs, examples["iris-tree"]))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not (await stubs.inference.ModelReady(pb.ModelReadyRequest(name="iris-tree"))).ready


async def test_unload_during_a_load_cancels_it_and_leaves_nothing_loaded(
    start_runtime: Callable[..., RuntimeProcess], examples: dict[str, ExampleModel]
) -> None:
    # A fresh runtime's first sklearn load spends seconds importing scikit-learn: time enough to unload mid-load.
    private = start_runtime()
    async with grpc.aio.insecure_channel(private.address) as channel:
        stubs = Stubs(rt_grpc.ModelRuntimeStub(channel), pb_grpc.GRPCInferenceServiceStub(channel))
        loading = asyncio.ensure_future(load_example(stubs, examples["iris-tree"]))
        await asyncio.sleep(0.3)
        await stubs.spi.unloadModel(rt.UnloadModelRequest(modelId="iris-tree"))

        error = await rpc_error(loading)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "cancelled by unloadModel" in (error.details() or "")
        assert not (await stubs.inference.ModelReady(pb.ModelReadyRequest(name="iris-tree"))).ready
        # The abandoned load finishes in its thread without landing; a new load works.
        assert await load_example(stubs, examples["iris-tree"]) > 0
        assert (await stubs.inference.ModelReady(pb.ModelReadyRequest(name="iris-tree"))).ready
    assert private.log().count("loaded model iris-tree ") == 1


# ---------------------------------------------------------------------------------------------------------------
# Inference


SKLEARN_IDS = [model_id for model_id in EXAMPLE_IDS if model_id.startswith("iris-")]


@pytest.mark.parametrize("model_id", SKLEARN_IDS)
async def test_sklearn_infer_matches_the_estimator(
    stubs: Stubs, examples: dict[str, ExampleModel], model_id: str
) -> None:
    await load_example(stubs, examples[model_id])
    estimator = joblib.load(examples[model_id].path / "model.joblib")
    x = iris_rows()

    response = await stubs.inference.ModelInfer(infer_request(model_id, {"features": x}))

    assert response.model_name == model_id and response.id == "request-1"
    assert [(o.name, o.datatype) for o in response.outputs] == [("predict", "INT64"), ("predict_proba", "FP64")]
    outputs = outputs_to_numpy(response)
    np.testing.assert_array_equal(outputs["predict"], estimator.predict(x))
    np.testing.assert_allclose(outputs["predict_proba"], estimator.predict_proba(x), rtol=1e-12)


async def test_sklearn_takes_the_input_dtype_and_returns_only_requested_outputs(
    stubs: Stubs, examples: dict[str, ExampleModel]
) -> None:
    await load_example(stubs, examples["iris-tree"])
    x = iris_rows().astype(np.float32)

    response = await stubs.inference.ModelInfer(infer_request("iris-tree", {"x": x}, outputs=["predict"]))

    assert [o.name for o in response.outputs] == ["predict"]
    estimator = joblib.load(examples["iris-tree"].path / "model.joblib")
    np.testing.assert_array_equal(outputs_to_numpy(response)["predict"], estimator.predict(x))


async def test_sklearn_metadata_describes_features_and_outputs(stubs: Stubs, examples: dict[str, ExampleModel]) -> None:
    await load_example(stubs, examples["iris-logreg"])
    metadata = await stubs.inference.ModelMetadata(pb.ModelMetadataRequest(name="iris-logreg"))
    assert metadata.name == "iris-logreg" and metadata.platform == "sklearn"
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("input", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("predict", "INT64", [-1]),
        ("predict_proba", "FP64", [-1, 3]),
    ]


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [("text-upper", ["HELLO", "ÉTÉ", "", "MIXED 123"]), ("text-reverse", ["olleh", "été", "", "321 dexiM"])],
)
async def test_text_models_transform_each_element_and_count_characters(
    stubs: Stubs, examples: dict[str, ExampleModel], model_id: str, expected: list[str]
) -> None:
    await load_example(stubs, examples[model_id])
    request = pb.ModelInferRequest(model_name=model_id)
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[2, 2])
    tensor.contents.bytes_contents.extend(text.encode() for text in ["hello", "été", "", "Mixed 123"])

    response = await stubs.inference.ModelInfer(request)

    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("output", "BYTES", [2, 2]),
        ("length", "INT32", [2, 2]),
    ]
    outputs = outputs_to_numpy(response)
    assert [item.decode() for item in outputs["output"].ravel()] == expected
    assert outputs["length"].ravel().tolist() == [len(text) for text in expected]


# One tensor per v2 datatype, with the edge values of each and a mix of shapes.
EVERY_DATATYPE: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([0, 1, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([[0], [2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "INT64": np.array([[-(2**63)], [2**63 - 1]], dtype=np.int64),
    "FP16": np.array([1.5, -0.0, np.inf, 65504], dtype=np.float16),
    "FP32": np.array([[1.25, np.nan], [-np.inf, 3.4e38]], dtype=np.float32),
    "FP64": np.array([np.pi, -1e300, 5e-324], dtype=np.float64),
    "BYTES": np.array([[b"", b"\x00\xff binary"], ["ünïcode".encode(), b"x" * 1000]], dtype=object),
}


async def test_echo_round_trips_every_datatype(stubs: Stubs, examples: dict[str, ExampleModel]) -> None:
    await load_example(stubs, examples["echo"])
    inputs = {name.lower(): array for name, array in EVERY_DATATYPE.items()}
    inputs["empty"] = np.zeros((0, 3), dtype=np.float32)

    response = await stubs.inference.ModelInfer(infer_request("echo", inputs))

    assert len(EVERY_DATATYPE) == 13
    datatypes = {o.name: (o.datatype, list(o.shape)) for o in response.outputs}
    assert datatypes == {
        **{name.lower(): (name, list(array.shape)) for name, array in EVERY_DATATYPE.items()},
        "empty": ("FP32", [0, 3]),
    }
    outputs = outputs_to_numpy(response)
    for name, array in inputs.items():
        assert outputs[name].dtype == array.dtype, name
        np.testing.assert_array_equal(outputs[name], array, err_msg=name)


async def test_echo_returns_only_requested_outputs(stubs: Stubs, examples: dict[str, ExampleModel]) -> None:
    await load_example(stubs, examples["echo"])
    inputs = {"a": np.arange(2), "b": np.ones(3, dtype=np.float32)}
    response = await stubs.inference.ModelInfer(infer_request("echo", inputs, outputs=["b"]))
    assert [o.name for o in response.outputs] == ["b"]


# ---------------------------------------------------------------------------------------------------------------
# Inference errors


async def test_infer_on_a_model_that_is_not_loaded_is_not_found(stubs: Stubs) -> None:
    error = await rpc_error(stubs.inference.ModelInfer(infer_request("ghost", {"x": np.arange(2)})))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "model ghost is not loaded"
    error = await rpc_error(stubs.inference.ModelMetadata(pb.ModelMetadataRequest(name="ghost")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def _raw_with_wrong_length(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP64", shape=[2, 4])
    request.raw_input_contents.append(b"\x00" * 7)
    return request


@pytest.mark.parametrize(
    ("model_id", "request_of", "message"),
    [
        ("iris-logreg", lambda m: infer_request(m, {"x": np.array([[b"a"] * 4], dtype=object)}), "dtype object"),
        ("iris-logreg", lambda m: infer_request(m, {"x": np.ones((2, 4), dtype=bool)}), "dtype bool"),
        ("iris-logreg", lambda m: infer_request(m, {"x": np.ones((2, 3))}), "shape [2, 3]"),
        ("iris-logreg", lambda m: infer_request(m, {"x": np.ones(4)}), "shape [4]"),
        ("iris-logreg", lambda m: infer_request(m, {"x": np.ones((1, 4)), "y": np.ones((1, 4))}), "exactly one"),
        ("iris-logreg", lambda m: infer_request(m, {"x": np.full((1, 4), np.nan)}), "NaN"),
        ("iris-logreg", lambda m: infer_request(m, {"x": np.ones((1, 4))}, ["labels"]), "unknown output(s) labels"),
        ("iris-logreg", _raw_with_wrong_length, "needs 64 bytes"),
        ("text-upper", lambda m: infer_request(m, {"t": np.arange(3, dtype=np.int32)}), "needs BYTES"),
        ("text-upper", lambda m: infer_request(m, {"t": np.array([b"\xff\xfe"], dtype=object)}), "not valid UTF-8"),
        ("echo", lambda m: pb.ModelInferRequest(model_name=m), "at least one input"),
    ],
    ids=[
        "bytes",
        "bool",
        "wrong-width",
        "one-dimensional",
        "two-inputs",
        "nan",
        "unknown-output",
        "short-raw",
        "text-int",
        "text-not-utf8",
        "echo-no-inputs",
    ],
)
async def test_bad_inputs_are_invalid_argument_with_a_reason(
    stubs: Stubs,
    examples: dict[str, ExampleModel],
    model_id: str,
    request_of: Callable[[str], pb.ModelInferRequest],
    message: str,
) -> None:
    await load_example(stubs, examples[model_id])
    error = await rpc_error(stubs.inference.ModelInfer(request_of(model_id)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")
