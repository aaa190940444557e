"""Hypothesis strategies for hostile input, and the settings every property test here runs under.

Runs are reproducible by default (`derandomize=True`: the same examples every run, no example database), and
bounded so that tests/hostile takes well under a minute. `MESH_HYPOTHESIS=explore` runs ten times the examples
from a random seed, to look for new failures; a failure prints the `@reproduce_failure` line to pin it.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mesh.codec.tensors import DATATYPES
from mesh.gen import grpc_predict_v2_pb2 as pb

_EXPLORE = os.environ.get("MESH_HYPOTHESIS") == "explore"


def bounded(max_examples: int) -> settings:
    """The settings of one property test: `max_examples` examples (ten times that when exploring)."""
    return settings(
        max_examples=max_examples * 10 if _EXPLORE else max_examples,
        deadline=None if _EXPLORE else 5000,  # ms per example: a hang fails, a slow CI machine does not
        derandomize=not _EXPLORE,
        database=None,
        # The end-to-end tests share one server across examples on purpose; the inputs here are large on purpose.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


# Text that JSON can carry and UTF-8 cannot: lone surrogates (U+D800..U+DFFF) included, control characters too.
any_text = st.one_of(
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u0085", "\u202e", "\ufeff", "名前"]),
    st.text(st.characters(exclude_categories=()), max_size=20),
)
names = st.one_of(st.sampled_from(["x", "y", "", "x\x00", "\ud800"]), any_text)
huge_ints = st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63)])
numbers = st.one_of(
    st.integers(min_value=-5, max_value=300),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, 65504.0, 65505.0, 3.4e38, 3.5e38]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
)
datatypes = st.one_of(st.sampled_from(sorted(DATATYPES)), st.sampled_from(["FP8", "fp32", "STRING", "", "INT128"]))
dims = st.one_of(
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=-3, max_value=-1),
    st.sampled_from([2**31, 2**62, 2**63 - 1, 2**63, -(2**63), -(2**64)]),
)
shapes = st.one_of(
    st.lists(dims, max_size=4),
    st.sampled_from([[0, 2**62, 2**62], [0, 2**61], [2**32, 2**32]]),  # no elements, or too many, yet past int64
    st.lists(st.just(1), min_size=30, max_size=70),  # past numpy's dimension limit
    json_values,  # not a shape at all
)


def nested(depth: int, leaf: str = "1") -> str:
    """A JSON array nested `depth` deep around one leaf."""
    return "[" * depth + leaf + "]" * depth


@st.composite
def flat_data(draw: st.DrawFn) -> list[Any]:
    """Tensor data as a client might get it wrong: numbers, strings, mixed, ragged, nested."""
    return draw(
        st.one_of(
            st.lists(numbers, max_size=8),
            st.lists(st.booleans(), max_size=8),
            st.lists(any_text, max_size=8),
            st.lists(json_values, max_size=4),
            st.lists(st.lists(numbers, max_size=3), max_size=3),
        )
    )


def bytes_frames(elements: list[bytes], overrun: int = 0) -> bytes:
    """BYTES raw contents: each element behind its 4-byte little-endian length, the last length `overrun` too big."""
    out = bytearray()
    for index, element in enumerate(elements):
        extra = overrun if index == len(elements) - 1 else 0
        out += struct.pack("<I", (len(element) + extra) % 2**32) + element
    return bytes(out)


binary_parts = st.one_of(
    st.binary(max_size=64),
    st.builds(bytes_frames, st.lists(st.binary(max_size=8), max_size=4), st.integers(min_value=0, max_value=2**32)),
    st.builds(bytes_frames, st.lists(st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"ok"]), max_size=3)),
)


@st.composite
def rest_inputs(draw: st.DrawFn) -> tuple[dict[str, Any], bytes | None]:
    """One REST input object, and its binary part when it is sent as binary data."""
    item: dict[str, Any] = {"name": draw(names), "datatype": draw(datatypes), "shape": draw(shapes)}
    parameters: dict[str, Any] = draw(st.dictionaries(any_text, scalars, max_size=2))
    part = None
    if draw(st.booleans()):
        part = draw(binary_parts)
        parameters["binary_data_size"] = draw(st.one_of(st.just(len(part)), st.integers(-2, 100), json_values))
    else:
        item["data"] = draw(st.one_of(flat_data(), json_values))
    if draw(st.booleans()):
        parameters["content_type"] = draw(st.sampled_from(["base64", "b64", "str", 7]))
    if parameters or draw(st.booleans()):
        item["parameters"] = parameters if draw(st.integers(0, 9)) else draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        del item[draw(st.sampled_from(sorted(item)))]
    return item, part


@st.composite
def rest_bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A REST infer body (JSON, then binary parts) and its Inference-Header-Content-Length, mostly well formed."""
    inputs = draw(st.lists(rest_inputs(), max_size=3))
    document: dict[str, Any] = {"inputs": [item for item, _ in inputs]}
    if draw(st.booleans()):
        document["id"] = draw(st.one_of(any_text, json_values))
    if draw(st.booleans()):
        document["parameters"] = draw(st.dictionaries(any_text, scalars, max_size=3) | json_values)
    if draw(st.booleans()):
        outputs = st.fixed_dictionaries({"name": names}, optional={"parameters": json_values})
        document["outputs"] = draw(st.lists(outputs, max_size=2) | json_values)
    header = json.dumps(document, allow_nan=True).encode()  # NaN/Infinity literals, \ud800 escapes
    tail = b"".join(part for _, part in inputs if part is not None)
    if draw(st.integers(0, 4)) == 0:
        tail += draw(st.binary(max_size=8))
    if not tail and draw(st.booleans()):
        return header, None
    length = draw(st.one_of(st.just(len(header)), st.integers(-2, len(header) + len(tail) + 2)))
    return header + tail, length


deep_json = st.integers(min_value=2, max_value=200_000).flatmap(
    lambda depth: st.sampled_from(
        [
            nested(depth),
            '{"inputs":' + nested(depth, "{}") + "}",
            '{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":' + nested(depth) + "}]}",
            '{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":' + nested(depth, '"a"') + "}]}",
            '{"parameters":' + '{"a":' * depth + "1" + "}" * depth + "}",
        ]
    )
)
# Whatever arrives on the wire: JSON values of any shape, request-like bodies, deep nesting, and raw bytes.
hostile_json_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    deep_json,
    st.sampled_from(["", "{", "NaN", '{"inputs": [}', "\ufeff{}", '{"inputs":[]}' + "x"]),
).map(str.encode) | st.binary(max_size=64)


# ---- protobuf ---------------------------------------------------------------------------------------------------

_tensor_shapes = st.lists(st.integers(min_value=0, max_value=3), max_size=3)


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Valid ModelInferRequests (as protobuf sees them; their tensors need not be consistent)."""
    text = st.text(max_size=12)
    request = pb.ModelInferRequest(model_name=draw(text), model_version=draw(text), id=draw(text))
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add(name=draw(text), datatype=draw(datatypes), shape=draw(_tensor_shapes))
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=4)))
        tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=4), max_size=2)))
    for key in draw(st.lists(text, max_size=2)):
        request.parameters[key].string_param = draw(text)
    request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=16), max_size=2)))
    return request
