"""A KServe transformer, as KServe's docs write one, served by mesh: `preprocess` turns rows of text
("5.1,3.5,1.4,0.2") into the feature tensor its predictor takes, KServe's own `predict` sends that to the predictor
over the network, and `postprocess` names the species from the probabilities it answers.

In mesh the predictor is another registered model (examples/custom/iris_predictor here; any model mesh serves
would do), named in the transformer's model key; the transformer reaches it through the router, which loads it on
demand like any model:

    mesh models register iris-predictor --type custom --path DEST/iris_predictor
    mesh models register iris --type custom --path DEST/iris_transformer --key '{"predictor": "iris-predictor"}'

The constructor takes `predictor_host` and `protocol` as in KServe's examples (mesh passes them; KServe 0.21's
predict reads the same settings from its own context).
"""

from __future__ import annotations

import numpy as np
from kserve import InferInput, InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

FEATURES = 4
SPECIES = ("setosa", "versicolor", "virginica")


class IrisTransformer(Model):
    def __init__(self, name: str, predictor_host: str, protocol: str = "v2") -> None:
        super().__init__(name)
        self.predictor_host = predictor_host
        self.protocol = protocol
        self.ready = True

    def preprocess(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferRequest:
        rows = payload.inputs[0].as_numpy().ravel()
        try:
            features = np.array([[float(v) for v in _text(row).split(",")] for row in rows], dtype=np.float32)
        except ValueError as exc:
            raise InvalidInput(f"each row is {FEATURES} comma-separated numbers: {exc}") from None
        if features.ndim != 2 or features.shape[1] != FEATURES:
            raise InvalidInput(f"each row is {FEATURES} comma-separated numbers, got shape {features.shape}")
        tensor = InferInput(name="features", shape=list(features.shape), datatype="FP32")
        tensor.set_data_from_numpy(features, binary_data=False)
        return InferRequest(model_name=self.name, infer_inputs=[tensor], request_id=payload.id)

    def postprocess(
        self, response: InferResponse, headers: dict[str, str] | None = None, response_headers: dict | None = None
    ) -> InferResponse:
        probabilities = response.outputs[0].as_numpy()
        species = np.array([SPECIES[i].encode() for i in probabilities.argmax(axis=1)], dtype=np.object_)
        named = InferOutput(name="species", shape=list(species.shape), datatype="BYTES")
        named.set_data_from_numpy(species)
        return InferResponse(response_id=response.id, model_name=self.name, infer_outputs=[named])


def _text(row: object) -> str:
    return row.decode() if isinstance(row, bytes) else str(row)
