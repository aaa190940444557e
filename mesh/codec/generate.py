"""The generate extension (Triton's `/v2/models/{name}/generate` and `generate_stream`, which LLM runtimes follow)
⇄ protobuf: a JSON object whose keys are the model's inputs, each a value or a list of them (strings become
BYTES, integers INT64, other numbers FP64, booleans BOOL), and `parameters` (the request's parameters). An answer is
a JSON object: `model_name`, `model_version`, and each output by name, a one-element output as its value (text
decoded), a longer one as a list.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mesh.codec.rest import set_parameters
from mesh.codec.tensors import outputs_to_numpy
from mesh.errors import InvalidArgument
from mesh.gen import grpc_predict_v2_pb2 as pb


def generate_request(body: bytes, model_name: str, model_version: str = "") -> pb.ModelInferRequest:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument('a generate request is a JSON object of inputs (e.g. {"text_input": "..."})')
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=str(document.pop("id", "")))
    parameters = document.pop("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    set_parameters(request.parameters, parameters, "request")
    if not document:
        raise InvalidArgument('a generate request names no input (e.g. {"text_input": "..."})')
    for name, value in document.items():
        _add_input(request, name, value)
    return request


def _add_input(request: pb.ModelInferRequest, name: str, value: object) -> None:
    values = value if isinstance(value, list) else [value]
    if not values or any(isinstance(v, (dict, list)) or v is None for v in values):
        raise InvalidArgument(f"input '{name}' must be a value or a flat, non-empty list of values")
    tensor = request.inputs.add(name=name, shape=[len(values)])
    if all(isinstance(v, str) for v in values):
        tensor.datatype = "BYTES"
        tensor.contents.bytes_contents.extend(v.encode("utf-8") for v in values)  # type: ignore[union-attr]
    elif all(isinstance(v, bool) for v in values):
        tensor.datatype = "BOOL"
        tensor.contents.bool_contents.extend(values)  # type: ignore[arg-type]
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        tensor.datatype = "INT64"
        tensor.contents.int64_contents.extend(values)  # type: ignore[arg-type]
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        tensor.datatype = "FP64"
        tensor.contents.fp64_contents.extend(float(v) for v in values)  # type: ignore[arg-type]
    else:
        raise InvalidArgument(f"input '{name}' mixes kinds of values; give one kind (strings, numbers, booleans)")


def generate_response_to_json(response: pb.ModelInferResponse) -> dict[str, Any]:
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    for name, array in outputs_to_numpy(response).items():
        values = [_json_value(v) for v in array.ravel().tolist()]
        document[name] = values[0] if len(values) == 1 else values
    return document


def _json_value(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value
