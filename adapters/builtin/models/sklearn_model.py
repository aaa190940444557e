"""modelType "sklearn": a scikit-learn estimator saved with joblib.

modelPath is the .joblib file, or a directory holding `model.joblib`. Only load files you trust: joblib files are
pickles and run code when loaded.

I/O: one input tensor of any name, integer or floating point, shape [batch, n_features_in_] (passed to the
estimator in the dtype it arrives in, so results match calling the estimator directly). Outputs:
- "predict": estimator.predict(x), in the dtype it returns (int64 labels for a classifier trained on integers,
  BYTES for string labels, FP64 for most regressors);
- "predict_proba": estimator.predict_proba(x), for estimators that have it.
A request that names no outputs gets all of them; otherwise only those it names (each computed only if asked).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adapters.builtin.models.base import (
    Model,
    ModelType,
    TensorSpec,
    datatype_of,
    measured_size,
    resolve_model_file,
    scaled_file_size,
    select_outputs,
    single_input,
)
from mesh.errors import InvalidArgument

MODEL_FILE = "model.joblib"
INPUT = "input"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"

# An uncompressed joblib file is the estimator's pickle with arrays stored raw, so memory ≈ file size; a quarter
# more covers what unpickling allocates beyond the pickle (1.25 is also ModelMesh's adapters' default
# MODELSIZE_MULTIPLIER). Larger margins make a model that fits look as if it did not: the router refuses a load
# whose prediction exceeds every instance. Compressed files expand by the compression ratio, which is unknown
# without decompressing, so they get a generous multiplier.
SIZE_MULTIPLIER = 1.25
COMPRESSED_SIZE_MULTIPLIER = 10.0
# Every pickle starts with the PROTO opcode; a joblib file that does not is one of its compressed formats.
_PICKLE_PROTO = b"\x80"


class SklearnModel(Model):
    # Estimator predict is arbitrary CPU work (a forest over a big batch, k-NN distances): keep it off the loop.
    offload_predict = True

    def __init__(self, estimator: Any, size_bytes: int) -> None:
        super().__init__(size_bytes)
        self._estimator = estimator
        self._n_features: int | None = getattr(estimator, "n_features_in_", None)
        classes = getattr(estimator, "classes_", None)
        predict_spec = TensorSpec(PREDICT, datatype_of(classes.dtype) if classes is not None else "FP64", (-1,))
        self._outputs = [predict_spec]
        if hasattr(estimator, "predict_proba"):
            n_classes = len(classes) if classes is not None else -1
            self._outputs.append(TensorSpec(PREDICT_PROBA, "FP64", (-1, n_classes)))

    @property
    def platform(self) -> str:
        return "sklearn"

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return [TensorSpec(INPUT, "FP64", (-1, -1 if self._n_features is None else self._n_features))]

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return self._outputs

    def predict(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str]) -> dict[str, np.ndarray]:
        names = select_outputs([spec.name for spec in self._outputs], requested)
        x = self._features(inputs)
        try:
            outputs: dict[str, np.ndarray] = {}
            if PREDICT in names:
                outputs[PREDICT] = np.asarray(self._estimator.predict(x))
            if PREDICT_PROBA in names:
                outputs[PREDICT_PROBA] = np.asarray(self._estimator.predict_proba(x))
        except ValueError as exc:  # scikit-learn's input validation (NaN, inf, ...) reports what the caller sent
            raise InvalidArgument(f"sklearn model rejected the input: {exc}") from exc
        return outputs

    def _features(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        name, x = single_input(inputs, "sklearn")
        if x.dtype.kind not in "iuf":
            raise InvalidArgument(
                f"input '{name}' has dtype {x.dtype}; the sklearn model needs integers or floats (INT*, UINT*, FP*)"
            )
        expected = "?" if self._n_features is None else self._n_features
        if x.ndim != 2 or (self._n_features is not None and x.shape[1] != self._n_features):
            raise InvalidArgument(f"input '{name}' has shape {list(x.shape)}; expected [batch, {expected}]")
        return x


def load(model_path: str) -> SklearnModel:
    """Unpickles the estimator (blocking) and measures it."""
    path = resolve_model_file(model_path, MODEL_FILE)
    # Imported here: joblib pulls in scikit-learn as it unpickles, seconds of startup that only instances which
    # actually load a sklearn model should pay.
    import joblib

    estimator = joblib.load(path)
    if not callable(getattr(estimator, "predict", None)):
        raise TypeError(f"{type(estimator).__name__} object has no predict method")
    return SklearnModel(estimator, measured_size(estimator))


def estimate_size(model_path: str) -> int:
    """File size × SIZE_MULTIPLIER, or × COMPRESSED_SIZE_MULTIPLIER for a compressed joblib file."""
    path = resolve_model_file(model_path, MODEL_FILE)
    with path.open("rb") as file:
        compressed = file.read(1) != _PICKLE_PROTO
    return scaled_file_size(path, COMPRESSED_SIZE_MULTIPLIER if compressed else SIZE_MULTIPLIER)


SKLEARN = ModelType("sklearn", load, estimate_size)
