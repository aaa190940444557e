"""The REST front door of a real `mesh serve`: tritonclient's HTTP client, unmodified, and plain httpx."""

from __future__ import annotations

import base64

import httpx
import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient

# Rows of the iris data set and their species (0 setosa, 1 versicolor, 2 virginica).
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.4, 3.2, 4.5, 1.5], [6.3, 3.3, 6.0, 2.5]]

pytestmark = pytest.mark.slow  # one shared `mesh serve`: a router and two runtime processes


def assert_same_tensor(actual: np.ndarray | None, expected: np.ndarray) -> None:
    """Exact equality: dtype, shape and every bit (so -0.0 is not 0.0, and NaN equals NaN)."""
    assert actual is not None, "output missing"
    assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape)
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:
        assert actual.tobytes() == expected.tobytes(), (actual, expected)


def _input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _bytes(*items: bytes) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def test_server_is_live_and_ready(triton_http: httpclient.InferenceServerClient) -> None:
    assert triton_http.is_server_live()
    assert triton_http.is_server_ready()


def test_server_metadata_names_mesh_and_the_binary_extension(triton_http: httpclient.InferenceServerClient) -> None:
    metadata = triton_http.get_server_metadata()
    assert metadata["name"] == "mesh"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_is_ready_and_describes_itself(triton_http: httpclient.InferenceServerClient) -> None:
    assert triton_http.is_model_ready("text-upper")
    metadata = triton_http.get_model_metadata("text-upper")
    assert metadata["name"] == "text-upper"
    assert metadata["platform"] == "text-upper"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("output", "BYTES", [-1]),
        ("length", "INT32", [-1]),
    ]


def test_echo_returns_each_datatype_as_binary_data(
    triton_http: httpclient.InferenceServerClient, datatype: str, sample: np.ndarray
) -> None:
    result = triton_http.infer(
        "echo", [_input("t", sample, datatype)], outputs=[httpclient.InferRequestedOutput("t", binary_data=True)]
    )
    output = result.get_output("t")
    assert output["datatype"] == datatype
    assert "binary_data_size" in output["parameters"]
    assert_same_tensor(result.as_numpy("t"), sample)


def test_echo_returns_each_datatype_as_json(
    triton_http: httpclient.InferenceServerClient, datatype: str, sample: np.ndarray
) -> None:
    result = triton_http.infer(
        "echo",
        [_input("t", sample, datatype, binary=False)],
        outputs=[httpclient.InferRequestedOutput("t", binary_data=False)],
    )
    output = result.get_output("t")
    assert output["datatype"] == datatype
    assert "data" in output
    actual = result.as_numpy("t")
    if datatype == "BYTES":  # tritonclient gives JSON strings back as str
        actual = _bytes(*(item.encode("utf-8") for item in actual.ravel())).reshape(actual.shape)
    assert_same_tensor(actual, sample)


def test_echo_returns_every_datatype_in_one_binary_request(
    triton_http: httpclient.InferenceServerClient, all_samples: dict[str, np.ndarray]
) -> None:
    result = triton_http.infer("echo", [_input(name, array, name.upper()) for name, array in all_samples.items()])
    for name, array in all_samples.items():
        assert_same_tensor(result.as_numpy(name), array)


def test_echo_keeps_non_finite_floats_and_arbitrary_bytes_as_binary_data(
    triton_http: httpclient.InferenceServerClient,
) -> None:
    special = [np.nan, np.inf, -np.inf, -0.0]
    arrays = {
        "fp16": (np.array(special, dtype=np.float16), "FP16"),
        "fp64": (np.array(special, dtype=np.float64), "FP64"),
        "raw": (_bytes(b"\xff\xfe\x00", b"\x80", b"", b"\x00" * 4), "BYTES"),
    }
    result = triton_http.infer("echo", [_input(name, array, dt) for name, (array, dt) in arrays.items()])
    for name, (array, _) in arrays.items():
        assert_same_tensor(result.as_numpy(name), array)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_and_response(triton_http: httpclient.InferenceServerClient, algorithm: str) -> None:
    array = np.arange(1000, dtype=np.int64).reshape(10, 100)
    result = triton_http.infer(
        "echo",
        [_input("x", array, "INT64")],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert_same_tensor(result.as_numpy("x"), array)


def test_echo_widens_bf16_to_fp32(triton_http: httpclient.InferenceServerClient) -> None:
    # Documented in adapters/builtin/models/echo_model.py: numpy has no bfloat16, so BF16 arrives as float32.
    values = np.array([1.0, -2.5, 0.15625, 3.0e38], dtype=ml_dtypes.bfloat16)
    result = triton_http.infer("echo", [_input("b", values, "BF16")])
    assert result.get_output("b")["datatype"] == "FP32"
    assert_same_tensor(result.as_numpy("b"), values.astype(np.float32))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_text_upper_round_trips_utf8(triton_http: httpclient.InferenceServerClient, binary: bool) -> None:
    texts = ["h\u00e9llo w\u00f6rld", "", "stra\u00dfe"]
    result = triton_http.infer(
        "text-upper",
        [_input("text", _bytes(*(t.encode() for t in texts)), "BYTES", binary)],
        outputs=[httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("output", "length")],
    )
    output = [item.decode() if isinstance(item, bytes) else item for item in result.as_numpy("output")]
    assert output == ["H\u00c9LLO W\u00d6RLD", "", "STRASSE"]
    assert result.as_numpy("length").tolist() == [11, 0, 7]


def test_iris_logreg_over_json(triton_http: httpclient.InferenceServerClient) -> None:
    rows = np.array(IRIS_ROWS, dtype=np.float32)
    result = triton_http.infer(
        "iris-logreg",
        [_input("x", rows, "FP32", binary=False)],
        outputs=[httpclient.InferRequestedOutput(name, binary_data=False) for name in ("predict", "predict_proba")],
    )
    assert result.get_output("predict")["data"] == [0, 1, 2]
    probabilities = result.as_numpy("predict_proba")
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def _echo(rest: httpx.Client, body: dict[str, object], path: str = "/v2/models/echo/infer") -> dict[str, object]:
    response = rest.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def test_httpx_nested_bytes_data_round_trips_strings_and_shape(rest: httpx.Client) -> None:
    body = {"inputs": [{"name": "s", "shape": [2, 2], "datatype": "BYTES", "data": [["a", "b"], ["c", "d"]]}]}
    document = _echo(rest, body)
    assert document["model_name"] == "echo"
    [output] = document["outputs"]
    assert output == {"name": "s", "datatype": "BYTES", "shape": [2, 2], "data": ["a", "b", "c", "d"]}


def test_httpx_flat_data_round_trips(rest: httpx.Client) -> None:
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "s", "shape": [2, 2], "datatype": "BYTES", "data": ["\u00e9", "", "\u65e5", "d"]},
            {"name": "i", "shape": [3], "datatype": "INT64", "data": [-(2**63), 0, 2**63 - 1]},
            {"name": "b", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]},
        ],
    }
    document = _echo(rest, body)
    assert document["id"] == "req-1"
    assert document["outputs"] == [
        {"name": "s", "datatype": "BYTES", "shape": [2, 2], "data": ["\u00e9", "", "\u65e5", "d"]},
        {"name": "i", "datatype": "INT64", "shape": [3], "data": [-(2**63), 0, 2**63 - 1]},
        {"name": "b", "datatype": "BOOL", "shape": [1, 2], "data": [True, False]},
    ]


def test_httpx_base64_bytes_round_trip_and_non_utf8_output_comes_back_as_base64(rest: httpx.Client) -> None:
    items = [b"\xff\x00", b"ok"]
    encoded = [base64.b64encode(item).decode() for item in items]
    body = {
        "inputs": [
            {"name": "b", "shape": [2], "datatype": "BYTES", "parameters": {"content_type": "base64"}, "data": encoded}
        ]
    }
    [output] = _echo(rest, body)["outputs"]
    assert output["parameters"] == {"content_type": "base64"}
    assert [base64.b64decode(item) for item in output["data"]] == items


def test_httpx_versioned_infer_path(rest: httpx.Client) -> None:
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, -2.0]}]}
    document = _echo(rest, body, "/v2/models/echo/versions/7/infer")
    assert document["model_name"] == "echo"
    assert document["model_version"] == "7"
    assert document["outputs"] == [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.5, -2.0]}]


def test_httpx_health_and_model_routes(rest: httpx.Client) -> None:
    assert rest.get("/v2/health/live").status_code == 200
    assert rest.get("/v2/health/ready").status_code == 200
    assert rest.get("/v2/models/echo/ready").json() == {"name": "echo", "ready": True}
    assert rest.get("/v2/models/echo/versions/1/ready").status_code == 200
    assert rest.get("/v2").json()["name"] == "mesh"
