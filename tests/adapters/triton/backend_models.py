"""The same tiny model, y = x·Wᵀ + b, in the formats of Triton's other backends: ONNX (written as ONNX's protobuf
by hand, so no `onnx` package is needed; field numbers are onnx.proto's), TorchScript (made by the torchserve
venv's torch) and a TensorFlow SavedModel (made by tensorflow, where it is installed)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import numpy as np

WEIGHT = np.arange(12, dtype=np.float32).reshape(3, 4)
BIAS = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def expected(x: np.ndarray) -> np.ndarray:
    return x @ WEIGHT.T + BIAS


FLOAT = 1  # TensorProto.DataType.FLOAT
INT = 2  # AttributeProto.AttributeType.INT
IR_VERSION = 8
OPSET = 13


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode())


def _tensor(name: str, array: np.ndarray) -> bytes:
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, FLOAT) + _str(8, name) + _bytes(9, array.astype("<f4").tobytes())


def _value_info(name: str, dims: tuple[int | str, ...]) -> bytes:
    shape = b"".join(_bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, FLOAT) + _bytes(2, shape)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def linear_model(weight: np.ndarray, bias: np.ndarray) -> bytes:
    """An ONNX model taking x: FP32 [n, in] and answering y: FP32 [n, out] = x·weightᵀ + bias."""
    outputs, inputs = weight.shape
    trans_b = _str(1, "transB") + _int(20, INT) + _int(3, 1)
    node = _str(1, "x") + _str(1, "W") + _str(1, "b") + _str(2, "y") + _str(3, "linear") + _str(4, "Gemm")
    node += _bytes(5, trans_b)
    graph = (
        _bytes(1, node)
        + _str(2, "linear")
        + _bytes(5, _tensor("W", weight))
        + _bytes(5, _tensor("b", bias))
        + _bytes(11, _value_info("x", ("n", inputs)))
        + _bytes(12, _value_info("y", ("n", outputs)))
    )
    opset = _str(1, "") + _int(2, OPSET)
    return _int(1, IR_VERSION) + _str(2, "mesh-tests") + _bytes(7, graph) + _bytes(8, opset)


def onnx_model(folder: Path) -> Path:
    """folder/model.onnx; Triton's onnxruntime backend completes its config from the file (x in, y out)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(linear_model(WEIGHT, BIAS))
    return folder / "model.onnx"


TORCHSCRIPT_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
"""
MAKE_TORCHSCRIPT = """
import sys

import numpy as np
import torch

linear = torch.nn.Linear(4, 3)
with torch.no_grad():
    linear.weight.copy_(torch.from_numpy(np.load(sys.argv[1])))
    linear.bias.copy_(torch.from_numpy(np.load(sys.argv[2])))
torch.jit.script(linear).save(sys.argv[3])
"""


def torchscript_model(folder: Path, torch_venv: Path) -> Path:
    """folder/config.pbtxt + folder/1/model.pt, as Triton's PyTorch backend wants them (it does not complete a
    TorchScript model's config: the inputs and outputs are named INPUT__0 and OUTPUT__0)."""
    (folder / "1").mkdir(parents=True, exist_ok=True)
    np.save(folder / "weight.npy", WEIGHT)
    np.save(folder / "bias.npy", BIAS)
    argv = [str(torch_venv / "bin" / "python"), "-c", textwrap.dedent(MAKE_TORCHSCRIPT),
            str(folder / "weight.npy"), str(folder / "bias.npy"), str(folder / "1" / "model.pt")]  # fmt: skip
    subprocess.run(argv, check=True, timeout=120, capture_output=True)
    (folder / "weight.npy").unlink()
    (folder / "bias.npy").unlink()
    (folder / "config.pbtxt").write_text(textwrap.dedent(TORCHSCRIPT_CONFIG).lstrip())
    return folder


def saved_model(folder: Path) -> Path:
    """folder/model.savedmodel, made by tensorflow (ImportError without it): serving_default takes x, answers y."""
    import tensorflow as tf

    class Linear(tf.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.weight = tf.constant(WEIGHT.T)
            self.bias = tf.constant(BIAS)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: object) -> dict[str, object]:
            return {"y": tf.matmul(x, self.weight) + self.bias}

    model = Linear()
    tf.saved_model.save(model, str(folder / "model.savedmodel"), signatures={"serving_default": model.serve})
    return folder / "model.savedmodel"
