"""A custom model written with the KServe Python SDK, as mesh serves it (docs/runtimes.md, "Custom models").

KServe's transformer and predictor in one model: `preprocess` turns rows of text ("5.1,3.5,1.4,0.2") into a
feature tensor (what a KServe transformer does), `predict` runs a logistic regression on it with numpy (the
predictor), `postprocess` names the species. The weights are `weights.npz` beside this file (`coef`, `intercept`),
written by `python -m examples.custom.build DEST`. Register it with

    mesh models register iris-custom --type custom --path DEST/iris

and send it BYTES rows over REST or gRPC. The request's `x-request-id` header becomes the response's id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from .species import SPECIES  # a module beside this one: the folder is imported as a package of its own

FEATURES = 4


class IrisClassifier(Model):
    def load(self) -> bool:
        weights = np.load(Path(__file__).with_name("weights.npz"))
        self.coef, self.intercept = weights["coef"], weights["intercept"]
        self.ready = True
        return self.ready

    def preprocess(self, payload: InferRequest, headers: dict[str, str] | None = None) -> np.ndarray:
        rows = payload.inputs[0].as_numpy().ravel()
        try:
            features = np.array([[float(v) for v in _text(row).split(",")] for row in rows], dtype=np.float64)
        except ValueError as exc:
            raise InvalidInput(f"each row is {FEATURES} comma-separated numbers: {exc}") from None
        if features.ndim != 2 or features.shape[1] != FEATURES:
            raise InvalidInput(f"each row is {FEATURES} comma-separated numbers, got shape {features.shape}")
        return features

    def predict(self, features: np.ndarray, headers: dict[str, str] | None = None) -> np.ndarray:
        logits = features @ self.coef.T + self.intercept
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def postprocess(self, probabilities: np.ndarray, headers: dict[str, str] | None = None) -> InferResponse:
        species = np.array([SPECIES[i].encode() for i in probabilities.argmax(axis=1)], dtype=np.object_)
        named = InferOutput(name="species", shape=list(species.shape), datatype="BYTES")
        named.set_data_from_numpy(species)
        scores = InferOutput(name="probabilities", shape=list(probabilities.shape), datatype="FP32")
        scores.set_data_from_numpy(probabilities.astype(np.float32))
        request_id = (headers or {}).get("x-request-id", "")
        return InferResponse(response_id=request_id, model_name=self.name, infer_outputs=[named, scores])


def _text(row: object) -> str:
    return row.decode() if isinstance(row, bytes) else str(row)
