"""modelType "echo": returns its inputs unchanged, for proving every datatype round-trips through mesh.

modelPath is a JSON file (or a directory holding `model.json`) holding an object, normally `{}`. Its key
`ballast_bytes` makes the model hold that many bytes of real memory: a model of a chosen size, which is how
capacity and eviction are exercised without large model files. `load_seconds` makes loading take that long (in
the load's worker thread), as a large model's does: what fault tests kill a runtime in the middle of.
`predict_seconds` makes each request take that long (in a worker thread), as a large model's inference does:
requests that are still in flight when their copy is evicted.

I/O: any number (at least one) of inputs of any datatype and shape; each input `<name>` comes back as output
`<name>` with the same datatype, shape and data. A request that names outputs gets only those (each must be an
input's name). BF16 comes back as FP32: the codec widens it on the way in (see mesh/codec/tensors.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from adapters.builtin.models.base import (
    Model,
    ModelType,
    TensorSpec,
    estimate_json_config,
    measured_size,
    read_json_config,
    select_outputs,
)
from mesh.errors import InvalidArgument


class EchoModel(Model):
    @property
    def platform(self) -> str:
        return "echo"

    # Any names, datatypes and shapes: metadata lists no fixed tensors.
    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return []

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return []

    def predict(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str]) -> dict[str, np.ndarray]:
        if not inputs:
            raise InvalidArgument("the echo model needs at least one input tensor")
        return {name: inputs[name] for name in select_outputs(list(inputs), requested)}


class SlowEchoModel(EchoModel):
    """An echo model whose every prediction takes `seconds`, off the event loop."""

    offload_predict = True

    def __init__(self, size_bytes: int, seconds: float) -> None:
        super().__init__(size_bytes)
        self._seconds = seconds

    def predict(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str]) -> dict[str, np.ndarray]:
        time.sleep(self._seconds)
        return super().predict(inputs, requested)


class BallastEchoModel(EchoModel):
    def __init__(self, config_size: int, ballast_bytes: int) -> None:
        self._ballast = np.ones(ballast_bytes, dtype=np.uint8)  # ones: zero pages would not be resident
        super().__init__(config_size + self._ballast.nbytes)


def _ballast_bytes(config: Mapping[str, object]) -> int:
    ballast = config.get("ballast_bytes", 0)
    if not isinstance(ballast, int) or isinstance(ballast, bool) or ballast < 0:
        raise ValueError(f"ballast_bytes must be a non-negative integer, got {ballast!r}")
    return ballast


def _seconds(config: Mapping[str, object], key: str) -> float:
    seconds = config.get(key, 0)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds <= 3600:
        raise ValueError(f"{key} must be a number of seconds from 0 to 3600, got {seconds!r}")
    return float(seconds)


def _device_bytes(config: Mapping[str, object]) -> int:
    device = config.get("device_bytes", 0)
    if not isinstance(device, int) or isinstance(device, bool) or device < 0:
        raise ValueError(f"device_bytes must be a non-negative integer, got {device!r}")
    return device


def load(model_path: str) -> EchoModel:
    """Checks the config is a JSON object; the model holds nothing but its optional ballast (and says it holds
    `device_bytes` of accelerator memory, for placement tests on machines without one)."""
    config = read_json_config(model_path)
    ballast = _ballast_bytes(config)
    predict_seconds = _seconds(config, "predict_seconds")
    time.sleep(_seconds(config, "load_seconds"))  # a worker thread's: loads run off the event loop
    model: EchoModel
    if ballast:
        model = BallastEchoModel(measured_size(config), ballast)
    elif predict_seconds:
        model = SlowEchoModel(measured_size(config), predict_seconds)
    else:
        model = EchoModel(measured_size(config))
    model.device_bytes = _device_bytes(config)
    return model


def estimate(model_path: str) -> int:
    return estimate_json_config(model_path) + _ballast_bytes(read_json_config(model_path))


def estimate_device(model_path: str) -> int:
    return _device_bytes(read_json_config(model_path))


ECHO = ModelType("echo", load, estimate, estimate_device)
