"""tritonclient's gRPC client, unmodified, against a real `mesh serve`: health, metadata, inference, routing."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

TIMEOUT_S = 30.0
# Rows of the iris data set (sepal length, sepal width, petal length, petal width) and their species.
SETOSA = [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2], [5.0, 3.6, 1.4, 0.2]]
VIRGINICA = [[6.3, 3.3, 6.0, 2.5], [7.7, 3.8, 6.7, 2.2], [7.2, 3.6, 6.1, 2.5]]

pytestmark = pytest.mark.slow  # one shared `mesh serve`: a router and two runtime processes


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def assert_same_tensor(actual: np.ndarray | None, expected: np.ndarray) -> None:
    """Exact equality: dtype, shape and every bit (so -0.0 is not 0.0, and NaN equals NaN)."""
    assert actual is not None, "output missing"
    assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape)
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:
        assert actual.tobytes() == expected.tobytes(), (actual, expected)


def _bytes(*items: bytes) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def test_server_is_live_and_ready(triton_grpc: grpcclient.InferenceServerClient) -> None:
    assert triton_grpc.is_server_live(client_timeout=TIMEOUT_S)
    assert triton_grpc.is_server_ready(client_timeout=TIMEOUT_S)


def test_grpc_health_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_server_metadata_names_mesh_and_the_binary_extension(triton_grpc: grpcclient.InferenceServerClient) -> None:
    metadata = triton_grpc.get_server_metadata(as_json=True, client_timeout=TIMEOUT_S)
    assert metadata["name"] == "mesh"
    assert metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]


def test_registered_model_is_ready_before_any_request(triton_grpc: grpcclient.InferenceServerClient) -> None:
    assert triton_grpc.is_model_ready("iris-tree", client_timeout=TIMEOUT_S)


def test_model_metadata_describes_iris_logreg(triton_grpc: grpcclient.InferenceServerClient) -> None:
    metadata = triton_grpc.get_model_metadata("iris-logreg", as_json=True, client_timeout=TIMEOUT_S)
    assert metadata["name"] == "iris-logreg"
    assert metadata["platform"] == "sklearn"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("input", "FP64", ["-1", "4"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("predict", "INT64", ["-1"]),
        ("predict_proba", "FP64", ["-1", "3"]),
    ]


def test_iris_logreg_predicts_what_scikit_learn_predicts(triton_grpc: grpcclient.InferenceServerClient) -> None:
    # Trained exactly as examples/build_models.py trains the served model.
    x, y = load_iris(return_X_y=True)
    reference = LogisticRegression(max_iter=1000).fit(x, y)

    result = triton_grpc.infer("iris-logreg", [_input("x", x, "FP64")], client_timeout=TIMEOUT_S)

    predicted = result.as_numpy("predict")
    assert predicted.dtype == np.int64 and predicted.shape == (150,)
    np.testing.assert_array_equal(predicted, reference.predict(x))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), reference.predict_proba(x), rtol=1e-9, atol=1e-12)


def test_iris_logreg_classifies_well_known_rows(triton_grpc: grpcclient.InferenceServerClient) -> None:
    rows = np.array(SETOSA + VIRGINICA, dtype=np.float32)
    result = triton_grpc.infer(
        "iris-logreg",
        [_input("x", rows, "FP32")],
        outputs=[grpcclient.InferRequestedOutput("predict")],
        client_timeout=TIMEOUT_S,
    )
    assert result.as_numpy("predict").tolist() == [0, 0, 0, 2, 2, 2]
    assert result.as_numpy("predict_proba") is None  # only what was asked for


def test_text_upper_round_trips_utf8_bytes(triton_grpc: grpcclient.InferenceServerClient) -> None:
    texts = ["h\u00e9llo w\u00f6rld", "", "stra\u00dfe", "mesh"]
    result = triton_grpc.infer(
        "text-upper", [_input("text", _bytes(*(t.encode() for t in texts)), "BYTES")], client_timeout=TIMEOUT_S
    )
    output = result.as_numpy("output")
    assert output.dtype == object and output.shape == (4,)
    assert [item.decode("utf-8") for item in output] == ["H\u00c9LLO W\u00d6RLD", "", "STRASSE", "MESH"]
    assert result.as_numpy("length").tolist() == [11, 0, 7, 4]
    assert result.get_output("length").datatype == "INT32"


def test_echo_returns_each_datatype_unchanged(
    triton_grpc: grpcclient.InferenceServerClient, datatype: str, sample: np.ndarray
) -> None:
    result = triton_grpc.infer("echo", [_input("t", sample, datatype)], client_timeout=TIMEOUT_S)
    assert result.get_output("t").datatype == datatype
    assert_same_tensor(result.as_numpy("t"), sample)


def test_echo_returns_every_datatype_in_one_request(
    triton_grpc: grpcclient.InferenceServerClient, all_samples: dict[str, np.ndarray]
) -> None:
    inputs = [_input(name, array, name.upper()) for name, array in all_samples.items()]
    result = triton_grpc.infer("echo", inputs, client_timeout=TIMEOUT_S)
    assert [o.name for o in result.get_response().outputs] == list(all_samples)
    for name, array in all_samples.items():
        assert result.get_output(name).datatype == name.upper()
        assert_same_tensor(result.as_numpy(name), array)


def test_echo_keeps_non_finite_floats_signed_zeros_and_arbitrary_bytes(
    triton_grpc: grpcclient.InferenceServerClient,
) -> None:
    special = [np.nan, np.inf, -np.inf, -0.0]
    arrays = {
        "fp16": (np.array(special, dtype=np.float16), "FP16"),
        "fp32": (np.array(special, dtype=np.float32), "FP32"),
        "fp64": (np.array(special, dtype=np.float64), "FP64"),
        "raw": (_bytes(b"\xff\xfe\x00", b"\x80", b"", b"\x00" * 4), "BYTES"),
        "empty": (np.zeros((0, 3), dtype=np.int32), "INT32"),
    }
    result = triton_grpc.infer(
        "echo", [_input(name, array, dt) for name, (array, dt) in arrays.items()], client_timeout=TIMEOUT_S
    )
    for name, (array, _) in arrays.items():
        assert_same_tensor(result.as_numpy(name), array)


def test_mm_model_id_header_routes_whatever_model_name_says(triton_grpc: grpcclient.InferenceServerClient) -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3)
    result = triton_grpc.infer(
        "no-such-model", [_input("x", array, "INT32")], headers={"mm-model-id": "echo"}, client_timeout=TIMEOUT_S
    )
    assert_same_tensor(result.as_numpy("x"), array)
    assert result.get_response().model_name == "echo"


def test_mm_model_id_header_routes_metadata_and_readiness(triton_grpc: grpcclient.InferenceServerClient) -> None:
    headers = {"mm-model-id": "text-upper"}
    metadata = triton_grpc.get_model_metadata("no-such-model", headers=headers, as_json=True, client_timeout=TIMEOUT_S)
    assert (metadata["name"], metadata["platform"]) == ("text-upper", "text-upper")
    assert triton_grpc.is_model_ready("no-such-model", headers=headers, client_timeout=TIMEOUT_S)


def test_request_id_comes_back(triton_grpc: grpcclient.InferenceServerClient) -> None:
    array = np.array([7], dtype=np.int32)
    result = triton_grpc.infer("echo", [_input("x", array, "INT32")], request_id="req-42", client_timeout=TIMEOUT_S)
    assert result.get_response().id == "req-42"


def test_unknown_model_is_not_found_and_named(triton_grpc: grpcclient.InferenceServerClient) -> None:
    array = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException) as raised:
        triton_grpc.infer("no-such-model-x7", [_input("x", array, "FP32")], client_timeout=TIMEOUT_S)
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model-x7" in raised.value.message()


def test_unknown_model_in_header_is_not_found_and_named(triton_grpc: grpcclient.InferenceServerClient) -> None:
    array = np.zeros((1,), dtype=np.int32)
    for header in ("mm-model-id", "mm-vmodel-id"):
        with pytest.raises(InferenceServerException) as raised:
            triton_grpc.infer(
                "echo", [_input("x", array, "INT32")], headers={header: "ghost-model-q3"}, client_timeout=TIMEOUT_S
            )
        assert raised.value.status() == "StatusCode.NOT_FOUND", header
        assert "ghost-model-q3" in raised.value.message(), header


def test_both_routing_headers_at_once_are_invalid(triton_grpc: grpcclient.InferenceServerClient) -> None:
    array = np.zeros((1,), dtype=np.int32)
    with pytest.raises(InferenceServerException) as raised:
        triton_grpc.infer(
            "echo",
            [_input("x", array, "INT32")],
            headers={"mm-model-id": "echo", "mm-vmodel-id": "echo"},
            client_timeout=TIMEOUT_S,
        )
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "mm-model-id" in raised.value.message() and "mm-vmodel-id" in raised.value.message()
