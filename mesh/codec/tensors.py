"""protobuf ⇄ numpy: v2 tensors (typed or raw contents) as numpy arrays, for runtimes and for the REST codec.

Wire formats (KServe Open Inference Protocol v2):
- raw contents are little-endian; BOOL is one byte per element; BYTES is each element as a 4-byte little-endian
  length followed by its bytes (the layout of Triton's binary-data extension too).
- FP16 and BF16 have no typed `contents` field, so they travel only as raw bytes. BF16 is the top half of an IEEE
  float32: numpy has no bfloat16, so `inputs_to_numpy` widens it (exactly) to float32, and an
  ml_dtypes.bfloat16 model output is sent as its own bits.

The public names below the constants are the "wire array" layer that `rest` builds on: they are public to the
package, not to mesh (`mesh.codec` exports what callers use).

Errors in what a client sent raise InvalidArgument naming the tensor; a model output numpy cannot describe raises
MeshError (INTERNAL), because the caller did nothing wrong.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from mesh.errors import InvalidArgument, MeshError
from mesh.gen import grpc_predict_v2_pb2 as pb

BYTES = "BYTES"

# The numpy dtype whose memory is the raw wire format of each fixed-size datatype.
WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # the bits; see the module docstring
}
DATATYPES: frozenset[str] = frozenset([*WIRE_DTYPES, BYTES])

# The typed InferTensorContents field of each datatype; the narrow integers share the 32-bit fields.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}

# The element type of each typed field, for reading it back into numpy.
_FIELD_DTYPES: dict[str, np.dtype[Any]] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

# numpy (kind, itemsize) → v2 datatype, for model outputs of any byte order.
_DATATYPE_OF: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in WIRE_DTYPES.items() if name != "BF16"
}

_U32 = struct.Struct("<I")

# Shapes numpy can represent on every supported version: numpy 1.x allows 32 dimensions, and an array's byte size
# (counting a zero dimension as 1) must fit in int64 for the widest, 8-byte elements.
MAX_DIMS = 32
MAX_SPAN = 2**60


# ---------------------------------------------------------------------------------------------------------------
# Wire arrays, shared with the REST codec: they have the dtype of WIRE_DTYPES (BF16 as uint16 bits) or are object
# arrays of bytes for BYTES.


def element_count(name: str, shape: Iterable[int]) -> int:
    """The number of elements in `shape`; refuses a shape numpy cannot hold, even when it has no elements."""
    dims = list(shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"tensor '{name}': shape {dims} has a negative dimension")
    if len(dims) > MAX_DIMS:
        raise InvalidArgument(f"tensor '{name}': shape has {len(dims)} dimensions; at most {MAX_DIMS} are supported")
    if math.prod(d for d in dims if d) >= MAX_SPAN:
        raise InvalidArgument(
            f"tensor '{name}': shape {dims} is too large (its non-zero dimensions multiply past 2**60)"
        )
    return math.prod(dims)


def check_datatype(name: str, datatype: str) -> None:
    """Refuses a datatype the v2 protocol does not define."""
    if datatype not in DATATYPES:
        raise InvalidArgument(
            f"tensor '{name}': unknown datatype '{datatype}' (expected one of {', '.join(sorted(DATATYPES))})"
        )


def _serialize_bytes(items: Iterable[bytes]) -> bytes:
    return b"".join(_U32.pack(len(item)) + item for item in items)


def _deserialize_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    """Splits length-prefixed BYTES elements; the count must match the shape and nothing may be left over."""
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidArgument(f"tensor '{name}': BYTES data ends inside a 4-byte length prefix")
        (size,) = _U32.unpack_from(view, offset)
        offset += 4
        if offset + size > len(view):
            raise InvalidArgument(f"tensor '{name}': BYTES element of {size} bytes runs past the end of the data")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if len(items) != count:
        raise InvalidArgument(f"tensor '{name}': shape needs {count} BYTES elements, data has {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def raw_to_array(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """The wire array in one tensor's raw contents, whose size (or BYTES framing) must fit the shape."""
    count = element_count(name, shape)
    if datatype == BYTES:
        return _deserialize_bytes(name, raw, count).reshape(shape)
    dtype = WIRE_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgument(
            f"tensor '{name}': {datatype} shape {shape} needs {count * dtype.itemsize} bytes, got {len(raw)}"
        )
    if datatype == "BOOL":  # any non-zero byte is true; numpy would keep the odd bit pattern otherwise
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def contents_to_array(name: str, datatype: str, shape: list[int], contents: pb.InferTensorContents) -> np.ndarray:
    """The wire array in one tensor's typed contents, whose element count must fit the shape."""
    count = element_count(name, shape)
    field_name = CONTENTS_FIELD.get(datatype)
    if field_name is None:
        if count == 0:
            return np.empty(shape, dtype=WIRE_DTYPES[datatype])
        raise InvalidArgument(f"tensor '{name}': {datatype} has no typed contents; send it as raw contents")
    values = getattr(contents, field_name)
    if len(values) != count:
        raise InvalidArgument(
            f"tensor '{name}': {datatype} shape {shape} needs {count} elements in {field_name}, got {len(values)}"
        )
    if datatype == BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide = np.fromiter(values, dtype=_FIELD_DTYPES[field_name], count=count)
    return narrow(name, datatype, wide).reshape(shape)


def narrow(name: str, datatype: str, values: np.ndarray) -> np.ndarray:
    """Casts integers to the datatype's width, refusing values that do not fit."""
    dtype = WIRE_DTYPES[datatype]
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            raise InvalidArgument(f"tensor '{name}': values [{low}, {high}] do not fit {datatype}")
    return values.astype(dtype, copy=False)


def array_to_raw(datatype: str, array: np.ndarray) -> bytes:
    """The raw wire bytes of a wire array (C order, whatever the array's layout)."""
    if datatype == BYTES:
        return _serialize_bytes(array.ravel().tolist())
    return array.astype(WIRE_DTYPES[datatype], copy=False).tobytes()


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widens BF16 bits to the float32 values they stand for (exactly)."""
    return (bits.astype("<u4") << 16).view("<f4")


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Rounds float32 to the nearest bfloat16 (ties to even), the way ml_dtypes and torch do; NaN stays NaN."""
    bits = values.astype("<f4").view("<u4").astype("<u8")  # 64-bit so the rounding add cannot wrap
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded).astype("<u2")


def _to_user(datatype: str, wire: np.ndarray) -> np.ndarray:
    """A writable array for model code: BF16 widened to float32, buffers copied out of the message bytes."""
    if datatype == "BF16":
        return bf16_to_float32(wire)
    return wire if wire.flags.writeable else wire.copy()


# ---------------------------------------------------------------------------------------------------------------
# protobuf ⇄ numpy, for runtimes.


def _tensors_to_numpy(
    tensors: Iterable[pb.ModelInferRequest.InferInputTensor | pb.ModelInferResponse.InferOutputTensor],
    raw_contents: list[bytes],
    kind: str,
) -> dict[str, np.ndarray]:
    tensors = list(tensors)
    if raw_contents and len(raw_contents) != len(tensors):
        raise InvalidArgument(f"{len(raw_contents)} raw contents for {len(tensors)} {kind}s; they must match")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        check_datatype(name, datatype)
        if name in arrays:
            raise InvalidArgument(f"{kind} '{name}' appears more than once")
        if raw_contents and tensor.HasField("contents"):
            raise InvalidArgument(f"{kind} '{name}' has typed contents but the message uses raw contents")
        if raw_contents:
            wire = raw_to_array(name, datatype, shape, raw_contents[index])
        else:
            wire = contents_to_array(name, datatype, shape, tensor.contents)
        arrays[name] = _to_user(datatype, wire)
    return arrays


def inputs_to_numpy(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's inputs by name, from typed contents or raw_input_contents; BYTES as object arrays of bytes.

    BF16 inputs come back as float32. Raises InvalidArgument naming the input when the data does not fit its
    datatype and shape.
    """
    return _tensors_to_numpy(request.inputs, list(request.raw_input_contents), "input")


def outputs_to_numpy(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The response's outputs by name, decoded like `inputs_to_numpy` (for clients and tests of runtimes)."""
    return _tensors_to_numpy(response.outputs, list(response.raw_output_contents), "output")


def _datatype_of(name: str, dtype: np.dtype[Any]) -> str:
    if dtype.kind in "OSU":
        return BYTES
    if dtype.name == "bfloat16":  # ml_dtypes.bfloat16, whose memory is already the BF16 wire format
        return "BF16"
    datatype = _DATATYPE_OF.get((dtype.kind, dtype.itemsize))
    if datatype is None:
        raise MeshError(f"output '{name}': numpy dtype {dtype} has no v2 datatype")
    return datatype


def _as_bytes(name: str, item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    raise MeshError(f"output '{name}': BYTES element of type {type(item).__name__} is not bytes or str")


def _output_raw(name: str, datatype: str, array: np.ndarray) -> bytes:
    if datatype == BYTES:
        return _serialize_bytes(_as_bytes(name, item) for item in array.ravel().tolist())
    if datatype == "BF16":
        return array.tobytes()
    return array_to_raw(datatype, array)


def numpy_to_response(
    model_name: str, outputs: Mapping[str, np.ndarray], *, model_version: str = "", request_id: str = ""
) -> pb.ModelInferResponse:
    """A response carrying each array in raw_output_contents, its datatype derived from its dtype.

    object, bytes and str arrays become BYTES (str encoded as UTF-8); ml_dtypes.bfloat16 becomes BF16.
    """
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for name, value in outputs.items():
        array = np.asarray(value)
        datatype = _datatype_of(name, array.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(_output_raw(name, datatype, array))
    return response
