"""modelType "tokens": a text generator that streams, for the streaming path's tests and examples.

modelPath is a JSON file (or a directory holding `model.json`) such as `{"delay_ms": 10, "max_tokens": 64}`. It
answers a prompt by sending it back word by word, as a language model sends tokens: the generate extension's
names, input `text_input` (BYTES, one element: the prompt) and output `text_output` (BYTES, one element).
ModelInfer answers the whole text at once; ModelStreamInfer one response per word (each with its trailing space,
the last without), `delay_ms` apart, at most `max_tokens`. The delay is what lets a test hold a stream open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

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

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"


class TokensModel(Model):
    def __init__(self, delay_s: float, max_tokens: int, size_bytes: int) -> None:
        super().__init__(size_bytes)
        self.delay_s = delay_s
        self.max_tokens = max_tokens

    @property
    def platform(self) -> str:
        return "tokens"

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return [TensorSpec(TEXT_INPUT, "BYTES", (1,))]

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return [TensorSpec(TEXT_OUTPUT, "BYTES", (1,))]

    def _tokens(self, inputs: Mapping[str, np.ndarray]) -> list[str]:
        prompt = inputs.get(TEXT_INPUT)
        if prompt is None or prompt.dtype != object or prompt.size != 1:
            raise InvalidArgument(f"the tokens model needs one BYTES element named '{TEXT_INPUT}'")
        try:
            words = prompt.ravel()[0].decode("utf-8").split()
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"'{TEXT_INPUT}' is not valid UTF-8: {exc.reason}") from exc
        words = words[: self.max_tokens]
        return [word + (" " if i < len(words) - 1 else "") for i, word in enumerate(words)]

    def predict(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str]) -> dict[str, np.ndarray]:
        select_outputs([TEXT_OUTPUT], requested)
        return {TEXT_OUTPUT: _text("".join(self._tokens(inputs)))}

    async def stream(self, inputs: Mapping[str, np.ndarray]) -> AsyncIterator[dict[str, np.ndarray]]:  # type: ignore[override]
        for index, token in enumerate(self._tokens(inputs)):
            if index and self.delay_s:
                await asyncio.sleep(self.delay_s)  # the time a model takes per token
            yield {TEXT_OUTPUT: _text(token)}


def _text(value: str) -> np.ndarray:
    out = np.empty(1, dtype=object)
    out[0] = value.encode("utf-8")
    return out


def load(model_path: str) -> TokensModel:
    config = read_json_config(model_path)
    delay_ms, max_tokens = config.get("delay_ms", 0), config.get("max_tokens", 256)
    if not isinstance(delay_ms, int | float) or delay_ms < 0 or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError("delay_ms must be a number >= 0 and max_tokens an integer >= 1")
    return TokensModel(delay_ms / 1000, max_tokens, measured_size(config))


TOKENS = ModelType("tokens", load, estimate_json_config)
