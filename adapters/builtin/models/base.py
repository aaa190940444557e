"""What every model type provides: a blocking loader, a fast size estimate, and loaded models."""

from __future__ import annotations

import abc
import json
import math
import pickle
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapters.common.errors import ModelFileMissing
from mesh.codec import numpy_to_response
from mesh.errors import InvalidArgument, Unimplemented


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as ModelMetadata describes it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class Model(abc.ABC):
    """A loaded model: its measured size, its tensors, and a predict over numpy arrays."""

    #: Whether predict may take long enough that it must run off the event loop.
    offload_predict: bool = False
    #: Accelerator memory it holds (simulated: the built-in runtime runs on the CPU; an echo model's config sets it).
    device_bytes: int = 0

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes

    @property
    @abc.abstractmethod
    def platform(self) -> str: ...

    @property
    @abc.abstractmethod
    def inputs(self) -> Sequence[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> Sequence[TensorSpec]: ...

    @abc.abstractmethod
    def predict(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str]) -> dict[str, np.ndarray]:
        """The outputs named in `requested` (all outputs when it is empty); InvalidArgument for bad inputs."""

    def stream(self, inputs: Mapping[str, np.ndarray]) -> AsyncIterator[dict[str, np.ndarray]]:
        """The outputs of each response of a streamed answer (ModelStreamInfer); only models that stream have it."""
        raise Unimplemented(f"model type {self.platform} answers ModelInfer only; it does not stream")


@dataclass(frozen=True, slots=True)
class ModelType:
    """A modelType string's loader. `load` blocks (disk, unpickling); `estimate_size` only stats a file."""

    name: str
    load: Callable[[str], Model]
    estimate_size: Callable[[str], int]
    estimate_device_size: Callable[[str], int] = lambda _path: 0


def resolve_model_file(model_path: str, default_name: str) -> Path:
    """`model_path` itself, or `<model_path>/<default_name>` when it is a directory."""
    if not model_path:
        raise InvalidArgument("modelPath is empty")
    path = Path(model_path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise ModelFileMissing(f"model file not found: {path}")
    return path


def scaled_file_size(path: Path, multiplier: float) -> int:
    """A file's size on disk times `multiplier`, rounded up: the fast estimate behind predictModelSize."""
    return math.ceil(path.stat().st_size * multiplier)


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The v2 datatype name the codec gives arrays of `dtype`, for ModelMetadata."""
    # The codec owns the dtype → datatype mapping; asking it with an empty array keeps this module from growing a
    # second copy that could disagree with what ModelInfer actually returns.
    return numpy_to_response("", {"x": np.empty(0, dtype=dtype)}).outputs[0].datatype


def measured_size(obj: object) -> int:
    """Bytes `obj` holds, measured as its pickle with array buffers passed out of band.

    Array data (where nearly all of a model's memory is) counts exactly, by nbytes, without being copied;
    the rest of the object graph counts as its pickle encoding, a slight undercount of Python's object headers.
    """
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return len(header) + sum(buffer.raw().nbytes for buffer in buffers)


def select_outputs(available: Sequence[str], requested: Sequence[str]) -> list[str]:
    """The requested output names, or all of `available` when none were requested."""
    if not requested:
        return list(available)
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise InvalidArgument(f"unknown output(s) {', '.join(unknown)}; this model has: {', '.join(available)}")
    return list(dict.fromkeys(requested))


def single_input(inputs: Mapping[str, np.ndarray], model_kind: str) -> tuple[str, np.ndarray]:
    """The one input tensor of a single-input model."""
    if len(inputs) != 1:
        raise InvalidArgument(f"{model_kind} model takes exactly one input tensor, got {len(inputs)}")
    ((name, array),) = inputs.items()
    return name, array


JSON_CONFIG_FILE = "model.json"
#: The JSON-configured types hold their parsed config, a few times the file's bytes as Python objects.
JSON_SIZE_MULTIPLIER = 4.0


def read_json_config(model_path: str) -> dict[str, Any]:
    """The JSON object in the model's file (`model.json` when modelPath is a directory)."""
    path = resolve_model_file(model_path, JSON_CONFIG_FILE)
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"expected a JSON object, got {type(config).__name__}")
    return config


def estimate_json_config(model_path: str) -> int:
    """predictModelSize for the JSON-configured types."""
    return scaled_file_size(resolve_model_file(model_path, JSON_CONFIG_FILE), JSON_SIZE_MULTIPLIER)
