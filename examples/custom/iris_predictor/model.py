"""The predictor of examples/custom/iris_transformer: a logistic regression over iris features, with numpy.
`weights.npz` beside this file (`coef`, `intercept`) is written by `python -m examples.custom.build DEST`.

It takes one FP32 tensor of shape [rows, 4] and answers the species' probabilities, [rows, 3]: a predictor of its
own, which the transformer calls through the router, so each is loaded, evicted and sized on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

FEATURES = 4


class IrisPredictor(Model):
    def load(self) -> bool:
        weights = np.load(Path(__file__).with_name("weights.npz"))
        self.coef, self.intercept = weights["coef"], weights["intercept"]
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        features = payload.inputs[0].as_numpy().astype(np.float64)
        if features.ndim != 2 or features.shape[1] != FEATURES:
            raise InvalidInput(f"features are [rows, {FEATURES}], got shape {list(features.shape)}")
        logits = features @ self.coef.T + self.intercept
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        scores = InferOutput(name="probabilities", shape=list(probabilities.shape), datatype="FP32")
        scores.set_data_from_numpy(probabilities)
        # KServe's transformer passes x-request-id on to its predictor: the answer carries it back.
        request_id = (headers or {}).get("x-request-id") or payload.id
        return InferResponse(response_id=request_id, model_name=self.name, infer_outputs=[scores])
