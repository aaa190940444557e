"""modelType "text": a string transform over BYTES tensors.

modelPath is a JSON file (or a directory holding `model.json`) such as {"transform": "upper"}; the transforms are
in TRANSFORMS. I/O: one BYTES input of any name and shape, each element UTF-8 text. Outputs, same shape:
- "output" (BYTES): each element transformed, UTF-8 encoded;
- "length" (INT32): the number of characters (code points) in each output element.
A request that names no outputs gets both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from adapters.builtin.models.base import (
    Model,
    ModelType,
    TensorSpec,
    estimate_json_config,
    measured_size,
    read_json_config,
    select_outputs,
    single_input,
)
from mesh.errors import InvalidArgument

OUTPUT = "output"
LENGTH = "length"


def _reverse(text: str) -> str:
    return text[::-1]  # by code point: combining marks and emoji sequences come apart, which is fine for a demo


TRANSFORMS: dict[str, Callable[[str], str]] = {"upper": str.upper, "lower": str.lower, "reverse": _reverse}


class TextModel(Model):
    def __init__(self, transform: str, size_bytes: int) -> None:
        super().__init__(size_bytes)
        self.transform = transform
        self._apply = TRANSFORMS[transform]

    @property
    def platform(self) -> str:
        return f"text-{self.transform}"

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return [TensorSpec("input", "BYTES", (-1,))]

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return [TensorSpec(OUTPUT, "BYTES", (-1,)), TensorSpec(LENGTH, "INT32", (-1,))]

    def predict(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str]) -> dict[str, np.ndarray]:
        names = select_outputs([OUTPUT, LENGTH], requested)
        name, array = single_input(inputs, "text")
        if array.dtype != object:
            raise InvalidArgument(f"input '{name}' has dtype {array.dtype}; the text model needs BYTES")
        texts: list[str] = []
        for index, item in enumerate(array.ravel().tolist()):
            try:
                texts.append(self._apply(item.decode("utf-8")))
            except UnicodeDecodeError as exc:
                raise InvalidArgument(f"input '{name}' element {index} is not valid UTF-8: {exc.reason}") from exc
        outputs: dict[str, np.ndarray] = {}
        if OUTPUT in names:
            encoded = np.empty(len(texts), dtype=object)
            encoded[:] = [text.encode("utf-8") for text in texts]
            outputs[OUTPUT] = encoded.reshape(array.shape)
        if LENGTH in names:
            outputs[LENGTH] = np.array([len(text) for text in texts], dtype=np.int32).reshape(array.shape)
        return outputs


def load(model_path: str) -> TextModel:
    """Reads the config; an unknown or missing transform fails the load."""
    config = read_json_config(model_path)
    transform = config.get("transform")
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r} (expected one of: {', '.join(sorted(TRANSFORMS))})")
    # What the model holds is its config; the transform functions are shared by every text model.
    return TextModel(transform, measured_size(config))


TEXT = ModelType("text", load, estimate_json_config)
