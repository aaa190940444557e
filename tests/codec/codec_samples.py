"""Sample tensors and helpers shared by the codec tests (test_codec_tensors.py, test_codec_rest.py)."""

from __future__ import annotations

import struct
from typing import Any

import ml_dtypes
import numpy as np

# numpy arrays as a model returns them, the datatype numpy_to_response must choose, the JSON data expected.
OUTPUTS: dict[str, tuple[np.ndarray, str, list[Any]]] = {
    "bool": (np.array([[True], [False]]), "BOOL", [True, False]),
    "u8": (np.array([0, 255], np.uint8), "UINT8", [0, 255]),
    "u16": (np.array([65535], np.uint16), "UINT16", [65535]),
    "u32": (np.array([2**32 - 1], np.uint32), "UINT32", [2**32 - 1]),
    "u64": (np.array([2**64 - 1], np.uint64), "UINT64", [2**64 - 1]),
    "i8": (np.array([-128], np.int8), "INT8", [-128]),
    "i16": (np.array([-(2**15)], np.int16), "INT16", [-(2**15)]),
    "i32": (np.array([[1, -2], [3, 4]], np.int32), "INT32", [1, -2, 3, 4]),
    "i64": (np.array([-(2**63)], np.int64), "INT64", [-(2**63)]),
    "f16": (np.array([0.5, -65504], np.float16), "FP16", [0.5, -65504.0]),
    "f32": (np.array([[0.25, 1e30]], np.float32), "FP32", [0.25, float(np.float32(1e30))]),
    "f64": (np.array([0.1, -1e300]), "FP64", [0.1, -1e300]),
    "bf16": (np.array([1.5, -3.0], ml_dtypes.bfloat16), "BF16", [1.5, -3.0]),
    "obj": (np.array([[b"a", "b\u00e9"]], dtype=object), "BYTES", ["a", "b\u00e9"]),
    "str": (np.array(["x", "yy"]), "BYTES", ["x", "yy"]),
    "bytes": (np.array([b"p", b"qq"]), "BYTES", ["p", "qq"]),
}


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.tolist() == expected.tolist()


def serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)
