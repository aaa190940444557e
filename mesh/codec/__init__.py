"""The only place mesh converts tensors; everything else passes them through as bytes.

- `tensors`: protobuf ⇄ numpy (datatypes, typed and raw contents, BYTES length-prefix framing, BF16), for the
  built-in runtime and for `rest`.
- `rest`: KServe v2 REST JSON and Triton's binary-data extension ⇄ protobuf, for the REST front door.
- `generate`: the generate extension's JSON (`/generate`, `/generate_stream`) ⇄ protobuf.

Callers import from here; the submodules' other public names are the package's own plumbing.
"""

from mesh.codec.generate import generate_request, generate_response_to_json
from mesh.codec.rest import (
    OutputEncoding,
    decode_infer_request,
    encode_infer_response,
    infer_request_to_json,
    infer_response_to_json,
    model_metadata_to_json,
    server_metadata_to_json,
)
from mesh.codec.tensors import inputs_to_numpy, numpy_to_response, outputs_to_numpy

__all__ = [
    "OutputEncoding",
    "decode_infer_request",
    "encode_infer_response",
    "generate_request",
    "generate_response_to_json",
    "infer_request_to_json",
    "infer_response_to_json",
    "inputs_to_numpy",
    "model_metadata_to_json",
    "numpy_to_response",
    "outputs_to_numpy",
    "server_metadata_to_json",
]
