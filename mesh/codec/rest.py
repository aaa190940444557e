"""REST JSON ⇄ protobuf: the KServe v2 REST protocol with Triton's binary-data extension, built on `tensors`.

A REST infer body is JSON, optionally followed by binary parts (the `Inference-Header-Content-Length` header gives
the JSON's length); each binary input names its part's size in `binary_data_size`. JSON BYTES are UTF-8 strings,
or base64 with `content_type` "base64" (how non-UTF-8 outputs are sent). BF16 JSON numbers are rounded to
nearest-even on the way in, and BF16 outputs render as float32 numbers.

Errors in what a client sent raise InvalidArgument naming the tensor; a malformed runtime response raises MeshError
(INTERNAL), because the caller did nothing wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesh.codec.tensors import (
    BYTES,
    CONTENTS_FIELD,
    WIRE_DTYPES,
    array_to_raw,
    bf16_to_float32,
    check_datatype,
    contents_to_array,
    element_count,
    float32_to_bf16,
    narrow,
    raw_to_array,
)
from mesh.errors import InvalidArgument, MeshError
from mesh.gen import grpc_predict_v2_pb2 as pb


@dataclass(frozen=True)
class OutputEncoding:
    """Which outputs the REST caller asked to receive as binary data after the JSON header."""

    binary_default: bool = False  # the request's `parameters.binary_data_output`
    binary: Mapping[str, bool] = field(default_factory=dict)  # each requested output's `binary_data`

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


def _split_body(body: bytes, header_length: int | None) -> tuple[bytes | memoryview, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not 0 <= header_length <= len(body):
        raise InvalidArgument(
            f"Inference-Header-Content-Length {header_length} is outside the {len(body)}-byte request body"
        )
    view = memoryview(body)
    return view[:header_length], view[header_length:]


def _load_json_object(header: bytes | memoryview) -> dict[str, Any]:
    try:
        document = json.loads(bytes(header))
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"request body is not valid JSON: {err}") from err
    except RecursionError as err:  # the parser recurses per level of nesting
        raise InvalidArgument("request body is not valid JSON: it is nested too deeply") from err
    if not isinstance(document, dict):
        raise InvalidArgument("request body must be a JSON object")
    return document


def _text(value: str, what: str) -> str:
    """`value`, refused unless it is valid Unicode: JSON can carry lone surrogates ("\\ud800"), protobuf cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidArgument(f"{what} is not valid Unicode: {err.reason} at character {err.start}") from None
    return value


def _json_object(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return dict(value)


def _pop_bool(parameters: dict[str, Any], key: str, what: str) -> bool | None:
    value = parameters.pop(key, None)
    if value is not None and not isinstance(value, bool):
        raise InvalidArgument(f"{what}: parameter '{key}' must be true or false")
    return value


def set_parameters(target: Any, parameters: Mapping[str, Any], what: str) -> None:
    """Copies JSON parameters into a protobuf map<string, InferParameter>."""
    for key, value in parameters.items():
        _text(key, f"{what}: a parameter name")
        if isinstance(value, bool):  # before int: bool is an int in Python
            target[key].bool_param = value
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            target[key].int64_param = value
        elif isinstance(value, int) and 0 <= value < 2**64:
            target[key].uint64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        elif isinstance(value, str):
            target[key].string_param = _text(value, f"{what}: parameter '{key}'")
        else:
            raise InvalidArgument(f"{what}: parameter '{key}' must be a bool, 64-bit integer, number or string")


def _parameters_to_json(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            result[key] = getattr(parameter, choice)
    return result


def _shape(name: str, value: object) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d < 2**63 for d in value
    ):
        raise InvalidArgument(f"input '{name}': shape must be a list of 64-bit integers")
    element_count(name, value)
    return value


def _check_data_shape(name: str, array: np.ndarray, shape: list[int]) -> None:
    """Flat data needs the shape's element count; nested data must have exactly the shape."""
    count = math.prod(shape)
    if array.ndim <= 1 and array.size == count:
        return
    if array.ndim > 1 and list(array.shape) == shape:
        return
    raise InvalidArgument(
        f"input '{name}': data of shape {list(array.shape)} ({array.size} elements) does not match shape {shape}"
    )


def _json_bytes(name: str, data: list[Any], shape: list[int], content_type: str) -> np.ndarray:
    try:
        array = np.array(data, dtype=object)
    except ValueError as err:
        raise InvalidArgument(f"input '{name}': data is ragged: {err}") from err
    _check_data_shape(name, array, shape)
    items = array.ravel().tolist()
    if not all(isinstance(item, str) for item in items):
        raise InvalidArgument(f"input '{name}': BYTES data must be JSON strings")
    if content_type in ("base64", "b64"):
        try:
            items = [base64.b64decode(item, validate=True) for item in items]
        except (binascii.Error, ValueError) as err:
            raise InvalidArgument(f"input '{name}': data is not valid base64: {err}") from err
    else:
        try:
            items = [item.encode("utf-8") for item in items]
        except UnicodeEncodeError as err:  # JSON can carry lone surrogates ("\ud800"); UTF-8 cannot
            raise InvalidArgument(f"input '{name}': data is not valid Unicode: {err}") from err
    result = np.empty(len(items), dtype=object)
    result[:] = items
    return result.reshape(shape)


def _json_numbers(name: str, datatype: str, data: list[Any], shape: list[int]) -> np.ndarray:
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as err:
        raise InvalidArgument(f"input '{name}': data is ragged or not numeric: {err}") from err
    _check_data_shape(name, array, shape)
    kind = array.dtype.kind
    wanted = "f" if datatype == "BF16" else WIRE_DTYPES[datatype].kind
    if array.size and datatype == "BOOL" and kind != "b":
        raise InvalidArgument(f"input '{name}': BOOL data must be true or false")
    if array.size and wanted in "iu" and kind in "fO":
        return _exact_integers(name, datatype, data, shape)
    if array.size and wanted in "iu" and kind not in "iu":
        raise InvalidArgument(f"input '{name}': {datatype} data must be integers, got {array.dtype} values")
    if array.size and wanted == "f" and kind not in "iuf":
        raise InvalidArgument(f"input '{name}': {datatype} data must be numbers, got {array.dtype} values")
    array = array.reshape(shape)
    if datatype == "BF16":
        return float32_to_bf16(array.astype(np.float32))
    return narrow(name, datatype, array)


def _exact_integers(name: str, datatype: str, data: list[Any], shape: list[int]) -> np.ndarray:
    """The slow path for integer data numpy could not type: it makes [0, 2**64 - 1] float64, and huge ints objects."""
    items = np.array(data, dtype=object).ravel().tolist()
    if not all(type(item) is int for item in items):
        raise InvalidArgument(f"input '{name}': {datatype} data must be integers")
    info = np.iinfo(WIRE_DTYPES[datatype])
    low, high = min(items), max(items)
    if low < info.min or high > info.max:
        raise InvalidArgument(f"input '{name}': values [{low}, {high}] do not fit {datatype}")
    return np.array(items, dtype=WIRE_DTYPES[datatype]).reshape(shape)


@dataclass(frozen=True)
class _RestInput:
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any]  # without the REST-only ones
    array: np.ndarray  # a wire array
    raw: bytes | None  # the binary part it came from, if it was sent binary


def _binary_part(name: str, parameters: dict[str, Any], tail: memoryview, offset: int) -> bytes | None:
    """The input's bytes from the binary tail, when its parameters give a binary_data_size."""
    size = parameters.pop("binary_data_size", None)
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"input '{name}': binary_data_size must be a non-negative integer")
    if offset + size > len(tail):
        raise InvalidArgument(f"input '{name}': binary_data_size {size} runs past the {len(tail)} bytes of binary data")
    return bytes(tail[offset : offset + size])


def _json_data_array(
    name: str, datatype: str, shape: list[int], data: object, parameters: dict[str, Any]
) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidArgument(f"input '{name}': needs 'data' as a JSON array, or binary data")
    if datatype != BYTES:
        return _json_numbers(name, datatype, data, shape)
    content_type = parameters.get("content_type", "")
    if content_type in ("base64", "b64"):  # consumed here; a runtime must not decode it again
        del parameters["content_type"]
    return _json_bytes(name, data, shape, content_type)


def _decode_input(item: object, tail: memoryview, offset: int) -> _RestInput:
    """One JSON input, its data from JSON or from the binary tail at offset."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        raise InvalidArgument("each input must be a JSON object with a non-empty string 'name'")
    name = _text(item["name"], "an input name")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"input '{name}': 'datatype' must be a string")
    check_datatype(name, datatype)
    shape = _shape(name, item.get("shape"))
    parameters = _json_object(item.get("parameters"), f"input '{name}' parameters")
    if "shared_memory_region" in parameters:
        raise InvalidArgument(f"input '{name}': shared memory is not supported")
    raw = _binary_part(name, parameters, tail, offset)
    if raw is None:
        array = _json_data_array(name, datatype, shape, item.get("data"), parameters)
    elif "data" in item:
        raise InvalidArgument(f"input '{name}': has both 'data' and parameter 'binary_data_size'")
    else:
        array = raw_to_array(name, datatype, shape, raw)  # validates the size and the BYTES framing
    return _RestInput(name, datatype, shape, parameters, array, raw)


def _decode_inputs(items: object, tail: memoryview) -> list[_RestInput]:
    if not isinstance(items, list):
        raise InvalidArgument("request needs 'inputs' as a JSON array")
    tensors: list[_RestInput] = []
    offset = 0
    for item in items:
        tensor = _decode_input(item, tail, offset)
        if any(t.name == tensor.name for t in tensors):
            raise InvalidArgument(f"input '{tensor.name}' appears more than once")
        tensors.append(tensor)
        offset += 0 if tensor.raw is None else len(tensor.raw)
    if offset != len(tail):
        raise InvalidArgument(f"binary data has {len(tail)} bytes but the inputs' binary_data_size total {offset}")
    return tensors


def _add_inputs(request: pb.ModelInferRequest, tensors: list[_RestInput]) -> None:
    # The protocol forbids mixing typed and raw contents in one request, and FP16/BF16 exist only raw.
    use_raw = any(t.raw is not None or t.datatype not in CONTENTS_FIELD for t in tensors)
    for tensor in tensors:
        message = request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        set_parameters(message.parameters, tensor.parameters, f"input '{tensor.name}'")
        if tensor.raw is not None:
            request.raw_input_contents.append(tensor.raw)
        elif use_raw:
            request.raw_input_contents.append(array_to_raw(tensor.datatype, tensor.array))
        else:
            getattr(message.contents, CONTENTS_FIELD[tensor.datatype]).extend(tensor.array.ravel().tolist())


def _add_outputs(request: pb.ModelInferRequest, items: object, binary_default: bool) -> OutputEncoding:
    if items is None:
        return OutputEncoding(binary_default)
    if not isinstance(items, list):
        raise InvalidArgument("'outputs' must be a JSON array")
    binary: dict[str, bool] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument("each requested output must be a JSON object with a string 'name'")
        name = _text(item["name"], "a requested output name")
        parameters = _json_object(item.get("parameters"), f"output '{name}' parameters")
        wants_binary = _pop_bool(parameters, "binary_data", f"output '{name}'")
        if wants_binary is not None:
            binary[name] = wants_binary
        set_parameters(request.outputs.add(name=name).parameters, parameters, f"output '{name}'")
    return OutputEncoding(binary_default, binary)


def decode_infer_request(
    body: bytes, header_length: int | None, *, model_name: str, model_version: str = ""
) -> tuple[pb.ModelInferRequest, OutputEncoding]:
    """A REST infer body (JSON, then binary data when `header_length` is given) as a protobuf request.

    The model name and version come from the URL, never the body. REST-only parameters (binary_data_size,
    binary_data, binary_data_output, a consumed base64 content_type) are not forwarded.
    """
    header, tail = _split_body(body, header_length)
    document = _load_json_object(header)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    _text(request_id, "'id'")
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    parameters = _json_object(document.get("parameters"), "request parameters")
    binary_default = bool(_pop_bool(parameters, "binary_data_output", "request"))
    set_parameters(request.parameters, parameters, "request")
    _add_inputs(request, _decode_inputs(document.get("inputs"), tail))
    return request, _add_outputs(request, document.get("outputs"), binary_default)


def _wire_output(tensor: pb.ModelInferResponse.InferOutputTensor, raw: bytes | None) -> np.ndarray:
    shape = list(tensor.shape)
    if raw is not None:
        return raw_to_array(tensor.name, tensor.datatype, shape, raw)
    return contents_to_array(tensor.name, tensor.datatype, shape, tensor.contents)


def _json_data(datatype: str, wire: np.ndarray) -> tuple[list[Any], str | None]:
    """Flat JSON values of a wire array, and the content_type they need (base64 for non-UTF-8 BYTES)."""
    flat = wire.ravel()
    if datatype == "BF16":
        return bf16_to_float32(flat).tolist(), None
    if datatype != BYTES:
        return flat.tolist(), None
    items: list[bytes] = flat.tolist()
    try:
        return [item.decode("utf-8") for item in items], None
    except UnicodeDecodeError:
        return [base64.b64encode(item).decode("ascii") for item in items], "base64"


_HOW_SENT = ("binary_data_size", "binary_data")


def _encode_output(
    tensor: pb.ModelInferResponse.InferOutputTensor, raw: bytes | None, binary: bool
) -> tuple[dict[str, Any], bytes | None]:
    check_datatype(tensor.name, tensor.datatype)
    output: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    parameters = _parameters_to_json(tensor.parameters)
    for key in _HOW_SENT:  # a runtime's own (KServe's servers pass them on): this answer says its own
        parameters.pop(key, None)
    part: bytes | None = None
    if binary:
        wire = _wire_output(tensor, raw)  # validates even when the raw bytes pass through unchanged
        part = raw if raw is not None else array_to_raw(tensor.datatype, wire)
        parameters["binary_data_size"] = len(part)
    else:
        output["data"], content_type = _json_data(tensor.datatype, _wire_output(tensor, raw))
        if content_type is not None:
            parameters["content_type"] = content_type
    if parameters:
        output["parameters"] = parameters
    return output, part


def infer_response_to_json(
    response: pb.ModelInferResponse, encoding: OutputEncoding
) -> tuple[dict[str, Any], list[bytes]]:
    """The REST JSON of a response, and the binary parts (in output order) for the outputs sent as binary."""
    raw = list(response.raw_output_contents)
    if raw and len(raw) != len(response.outputs):
        raise MeshError(f"runtime response has {len(raw)} raw contents for {len(response.outputs)} outputs")
    outputs: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for index, tensor in enumerate(response.outputs):
        try:
            output, part = _encode_output(tensor, raw[index] if raw else None, encoding.is_binary(tensor.name))
        except InvalidArgument as err:  # the runtime's fault, not the caller's
            raise MeshError(f"runtime response: {err.message}") from err
        outputs.append(output)
        if part is not None:
            parts.append(part)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
    }
    if response.parameters:
        document["parameters"] = _parameters_to_json(response.parameters)
    document["outputs"] = outputs
    return document, parts


def infer_request_to_json(request: pb.ModelInferRequest) -> dict[str, Any]:
    """The REST JSON of a request, every input as JSON data (the payload log's form of a gRPC request)."""
    raw = list(request.raw_input_contents)
    inputs = []
    for index, tensor in enumerate(request.inputs):
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        item["data"], content_type = _json_data(tensor.datatype, _wire_output(tensor, raw[index] if raw else None))
        if content_type is not None:
            item["parameters"] = {"content_type": content_type}
        inputs.append(item)
    return {"id": request.id, "model_name": request.model_name, "inputs": inputs}


def encode_infer_response(response: pb.ModelInferResponse, encoding: OutputEncoding) -> tuple[bytes, int | None]:
    """The REST body of a response, and the JSON header's length when binary outputs follow it (else None)."""
    document, parts = infer_response_to_json(response, encoding)
    header = json.dumps(document, separators=(",", ":")).encode("ascii")  # ASCII: header length is bytes
    if not parts:
        return header, None
    return b"".join([header, *parts]), len(header)


def model_metadata_to_json(metadata: pb.ModelMetadataResponse) -> dict[str, Any]:
    """The v2 REST model metadata object."""
    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": [_tensor_metadata(t) for t in metadata.inputs],
        "outputs": [_tensor_metadata(t) for t in metadata.outputs],
    }


def _tensor_metadata(tensor: pb.ModelMetadataResponse.TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def server_metadata_to_json(metadata: pb.ServerMetadataResponse) -> dict[str, Any]:
    """The v2 REST server metadata object."""
    return {"name": metadata.name, "version": metadata.version, "extensions": list(metadata.extensions)}
