"""The REST front door over real HTTP: routes, status codes, error bodies and the binary-data extension."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http.aio as aiohttpclient
from tritonclient.http import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from mesh import codec
from mesh.errors import ModelNotFound, Overloaded, RuntimeFailure, Unavailable
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.metrics import RouterMetrics
from mesh.proxy.dataplane import DataPlane, Metadata
from mesh.proxy.rest_server import MAX_BODY_BYTES, start_rest_server


@dataclass
class DoublingDataPlane(DataPlane):
    """Model 'double' doubles every input (BYTES repeat); 'loading' is not ready; 'boom' and 'oom' fail."""

    ready: bool = True
    requests: list[pb.ModelInferRequest] = field(default_factory=list)
    metadata: list[tuple[tuple[str, str | bytes], ...]] = field(default_factory=list)

    async def server_live(self) -> bool:
        return True

    async def server_ready(self) -> bool:
        return self.ready

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="mesh", version="0.1.0", extensions=["binary_tensor_data"])

    def _check(self, name: str) -> None:
        if name not in ("double", "loading", "boom", "oom", "thrashing"):
            raise ModelNotFound(name)

    async def model_ready(self, name: str, version: str = "") -> bool:
        self._check(name)
        return name != "loading"

    async def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        self._check(name)
        metadata = pb.ModelMetadataResponse(name=name, versions=[version or "1"], platform="test")
        metadata.inputs.add(name="x", datatype="FP32", shape=[-1, 2])
        metadata.outputs.add(name="x_x2", datatype="FP32", shape=[-1, 2])
        return metadata

    async def model_infer(self, request: pb.ModelInferRequest, metadata: Metadata = ()) -> pb.ModelInferResponse:
        self.requests.append(request)
        self.metadata.append(tuple(metadata))
        self._check(request.model_name)
        if request.model_name == "loading":
            raise Unavailable("model 'loading' is loading")
        if request.model_name == "boom":
            raise ZeroDivisionError("the model divided by zero")
        if request.model_name == "thrashing":
            raise Overloaded("the thrash guard holds the models in use; retry in 2.2s", retry_after_s=2.2)
        if request.model_name == "oom":
            raise RuntimeFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, "runtime out of memory")
        doubled = {f"{name}_x2": value * 2 for name, value in codec.inputs_to_numpy(request).items()}
        return codec.numpy_to_response(
            request.model_name, doubled, model_version=request.model_version or "1", request_id=request.id
        )


@pytest.fixture
def dataplane() -> DoublingDataPlane:
    return DoublingDataPlane()


@pytest.fixture
async def port(dataplane: DoublingDataPlane) -> AsyncIterator[int]:
    runner, bound = await start_rest_server(dataplane, RouterMetrics(), "127.0.0.1", 0)
    try:
        yield bound
    finally:
        await runner.cleanup()


@pytest.fixture
async def http(port: int) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client


@pytest.fixture
async def triton(port: int) -> AsyncIterator[aiohttpclient.InferenceServerClient]:
    async with aiohttpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        yield client


async def test_health_and_server_metadata(http: httpx.AsyncClient, dataplane: DoublingDataPlane) -> None:
    live = await http.get("/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})
    ready = await http.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    metadata = await http.get("/v2")
    assert metadata.json() == {"name": "mesh", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    dataplane.ready = False
    not_ready = await http.get("/v2/health/ready")
    assert (not_ready.status_code, not_ready.json()) == (503, {"error": "server is not ready"})


async def test_model_metadata_and_its_versions_form(http: httpx.AsyncClient) -> None:
    plain = await http.get("/v2/models/double")
    assert plain.status_code == 200
    assert plain.json() == {
        "name": "double",
        "versions": ["1"],
        "platform": "test",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "x_x2", "datatype": "FP32", "shape": [-1, 2]}],
    }
    versioned = await http.get("/v2/models/double/versions/7")
    assert versioned.json()["versions"] == ["7"]
    missing = await http.get("/v2/models/nope/versions/7")
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nope' is not registered"})


async def test_model_ready_is_200_when_ready_503_when_not_404_when_unknown(http: httpx.AsyncClient) -> None:
    ready = await http.get("/v2/models/double/ready")
    assert (ready.status_code, ready.json()) == (200, {"name": "double", "ready": True})
    assert (await http.get("/v2/models/double/versions/3/ready")).status_code == 200
    loading = await http.get("/v2/models/loading/ready")
    assert (loading.status_code, loading.json()) == (503, {"error": "model 'loading' is not ready"})
    assert (await http.get("/v2/models/nope/ready")).status_code == 404


async def test_tritonclient_health_calls(triton: aiohttpclient.InferenceServerClient) -> None:
    assert await triton.is_server_live()
    assert await triton.is_server_ready()
    assert await triton.is_model_ready("double")
    assert not await triton.is_model_ready("loading")
    assert (await triton.get_model_metadata("double"))["inputs"][0]["name"] == "x"


async def test_a_requests_headers_reach_the_runtime_as_metadata_but_not_the_hops_or_routing(
    http: httpx.AsyncClient, dataplane: DoublingDataPlane
) -> None:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    headers = {"X-Request-Id": "r-7", "x-tenant": "team-a", "mm-vmodel-id": "other", "x-trace-bin": "AAE=",
               "grpc-timeout": "1S", "x-accent": "café".encode()}  # fmt: skip
    response = await http.post("/v2/models/double/infer", json=body, headers=headers)
    assert response.status_code == 200, response.text
    passed = dict(dataplane.metadata[-1])
    assert passed["x-request-id"] == "r-7" and passed["x-tenant"] == "team-a"
    # routing, binary, reserved, non-ASCII and hop-by-hop headers stay here
    assert not {"mm-vmodel-id", "x-trace-bin", "grpc-timeout", "x-accent", "content-type", "host"} & set(passed)


async def test_json_infer_computes_json_outputs(http: httpx.AsyncClient, dataplane: DoublingDataPlane) -> None:
    body = {
        "id": "r1",
        "model_name": "ignored-in-favour-of-the-path",
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]},
            {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["ab"]},
        ],
    }
    response = await http.post("/v2/models/double/infer", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert "Inference-Header-Content-Length" not in response.headers
    assert response.json() == {
        "model_name": "double",
        "model_version": "1",
        "id": "r1",
        "outputs": [
            {"name": "x_x2", "datatype": "FP32", "shape": [2, 2], "data": [2.0, 4.0, 6.0, 9.0]},
            {"name": "s_x2", "datatype": "BYTES", "shape": [1], "data": ["abab"]},
        ],
    }
    assert dataplane.requests[-1].model_name == "double"


async def test_versioned_infer_passes_the_version(http: httpx.AsyncClient, dataplane: DoublingDataPlane) -> None:
    body = {"inputs": [{"name": "i", "shape": [1], "datatype": "INT64", "data": [2**40]}]}
    response = await http.post("/v2/models/double/versions/5/infer", json=body)
    assert response.json()["model_version"] == "5"
    assert response.json()["outputs"][0]["data"] == [2**41]
    assert dataplane.requests[-1].model_version == "5"


async def test_the_mm_path_names_the_model_whatever_the_rest_of_the_path_says(
    http: httpx.AsyncClient, dataplane: DoublingDataPlane
) -> None:
    """The REST form of mm-model-id, as a KServe transformer given a base URL calls its predictor."""
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}
    response = await http.post("/mm/double/v2/models/the-transformer/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model_name"] == "double"
    assert response.json()["outputs"][0]["data"] == [3.0]
    assert dataplane.requests[-1].model_name == "double"
    unknown = await http.post("/mm/absent/v2/models/double/infer", json=body)
    assert unknown.status_code == 404
    assert "absent" in unknown.json()["error"]


async def test_binary_extension_both_ways_over_raw_http(http: httpx.AsyncClient) -> None:
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [3], "datatype": "INT32", "parameters": {"binary_data_size": 12}}],
            "outputs": [{"name": "x_x2", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = await http.post(
        "/v2/models/double/infer",
        content=header + np.array([1, -2, 3], "<i4").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    split = int(response.headers["Inference-Header-Content-Length"])
    document = json.loads(response.content[:split])
    assert document["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert np.frombuffer(response.content[split:], "<i4").tolist() == [2, -4, 6]


@pytest.mark.parametrize("compression", [None, "gzip"])
async def test_tritonclient_infer_with_its_binary_defaults(
    triton: aiohttpclient.InferenceServerClient, compression: str | None
) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    s = np.array([b"\x00\xff", b"hi"], dtype=object)
    inputs = [InferInput("x", [2, 3], "FP32"), InferInput("s", [2], "BYTES")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(s)
    result = await triton.infer("double", inputs, request_id="t", request_compression_algorithm=compression)
    np.testing.assert_array_equal(result.as_numpy("x_x2"), x * 2)
    assert result.as_numpy("s_x2").tolist() == [b"\x00\xff\x00\xff", b"hihi"]
    assert result.get_response()["id"] == "t"
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


async def test_tritonclient_json_outputs_and_non_utf8_bytes(triton: aiohttpclient.InferenceServerClient) -> None:
    i = np.array([[7, -8]], dtype=np.int16)
    s = np.array([b"\xfe"], dtype=object)
    inputs = [InferInput("i", [1, 2], "INT16"), InferInput("s", [1], "BYTES")]
    inputs[0].set_data_from_numpy(i, binary_data=False)
    inputs[1].set_data_from_numpy(s)
    outputs = [InferRequestedOutput("i_x2", binary_data=False), InferRequestedOutput("s_x2", binary_data=False)]
    result = await triton.infer("double", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("i_x2"), i * 2)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert by_name["i_x2"]["data"] == [14, -16]
    assert by_name["s_x2"] == {
        "name": "s_x2",
        "datatype": "BYTES",
        "shape": [1],
        "data": ["/v4="],
        "parameters": {"content_type": "base64"},
    }


async def test_tritonclient_sees_mesh_errors(triton: aiohttpclient.InferenceServerClient) -> None:
    tensor = InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.array([1], np.float32))
    with pytest.raises(InferenceServerException) as caught:
        await triton.infer("nope", [tensor])
    assert (caught.value.status(), caught.value.message()) == ("404", "model 'nope' is not registered")


@pytest.mark.parametrize(
    ("model", "status", "message"),
    [
        ("nope", 404, "model 'nope' is not registered"),
        ("loading", 503, "model 'loading' is loading"),
        ("oom", 503, "runtime out of memory"),
        ("boom", 500, "internal error: ZeroDivisionError: the model divided by zero"),
    ],
)
async def test_infer_errors_map_by_type_to_status_and_json(
    http: httpx.AsyncClient, model: str, status: int, message: str
) -> None:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    response = await http.post(f"/v2/models/{model}/infer", json=body)
    assert (response.status_code, response.json()) == (status, {"error": message})
    assert "Retry-After" not in response.headers


async def test_an_overloaded_answer_says_when_to_retry(http: httpx.AsyncClient) -> None:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    response = await http.post("/v2/models/thrashing/infer", json=body)
    assert response.status_code == 503 and "retry in 2.2s" in response.json()["error"]
    assert response.headers["Retry-After"] == "3"  # whole seconds, rounded up


@pytest.mark.parametrize(
    ("content", "headers", "message"),
    [
        (b"{nope", {}, "request body is not valid JSON"),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]}',
            {},
            "tensor 'x': unknown datatype 'FP99'",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}',
            {},
            "input 'x': data of shape [2] (2 elements) does not match shape [3]",
        ),
        (b"{}", {"Inference-Header-Content-Length": "two"}, "must be an integer, got 'two'"),
        (b"{}", {"Inference-Header-Content-Length": "50"}, "is outside the 2-byte request body"),
    ],
)
async def test_bad_requests_are_400_with_the_codec_message(
    http: httpx.AsyncClient, dataplane: DoublingDataPlane, content: bytes, headers: dict[str, str], message: str
) -> None:
    response = await http.post("/v2/models/double/infer", content=content, headers=headers)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert dataplane.requests == []


async def test_unknown_routes_and_methods_are_json_errors(http: httpx.AsyncClient) -> None:
    missing = await http.get("/v2/models/double/config")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Not Found (GET /v2/models/double/config)"}
    wrong_method = await http.get("/v2/models/double/infer")
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"error": "Method Not Allowed (GET /v2/models/double/infer)"}


async def test_bodies_over_64_mib_are_413_json(http: httpx.AsyncClient, dataplane: DoublingDataPlane) -> None:
    response = await http.post("/v2/models/double/infer", content=b" " * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert "Maximum request body size 67108864 exceeded" in response.json()["error"]
    assert dataplane.requests == []


async def test_a_body_of_nearly_64_mib_is_served(http: httpx.AsyncClient) -> None:
    x = np.arange(MAX_BODY_BYTES // 4 - 1024, dtype=np.float32)
    tensor = {"name": "x", "shape": [x.size], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    response = await http.post(
        "/v2/models/double/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200
    split = int(response.headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(np.frombuffer(response.content[split:], "<f4"), x * 2)
