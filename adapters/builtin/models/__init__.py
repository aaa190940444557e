"""The model types the built-in runtime loads, by modelType string."""

from __future__ import annotations

from adapters.builtin.models.base import Model, ModelType, TensorSpec
from adapters.builtin.models.echo_model import ECHO
from adapters.builtin.models.sklearn_model import SKLEARN
from adapters.builtin.models.text_model import TEXT
from adapters.builtin.models.tokens_model import TOKENS
from mesh.errors import InvalidArgument

MODEL_TYPES: dict[str, ModelType] = {model_type.name: model_type for model_type in (SKLEARN, TEXT, ECHO, TOKENS)}


def model_type(name: str) -> ModelType:
    """The loader for a modelType; InvalidArgument for one this runtime does not serve."""
    found = MODEL_TYPES.get(name)
    if found is None:
        raise InvalidArgument(f"unsupported modelType '{name}' (this runtime loads: {', '.join(MODEL_TYPES)})")
    return found


__all__ = ["MODEL_TYPES", "Model", "ModelType", "TensorSpec", "model_type"]
