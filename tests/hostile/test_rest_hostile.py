"""The REST door of a real router under hostile bodies: a 4xx JSON error without a traceback, and it keeps serving."""

from __future__ import annotations

import gzip

import pytest
from harness.hostile import MAX_MESSAGE_BYTES, MODEL, HostileMesh
from hostile_strategies import bounded, hostile_json_bodies, rest_bodies
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.asyncio(loop_scope="module")

INFER = f"/v2/models/{MODEL}/infer"
GOOD = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 2]}]}


def assert_clean_error(response, statuses: tuple[int, ...] = (400,)) -> str:  # type: ignore[no-untyped-def]
    """The response is one of `statuses` with a JSON {"error": message} that shows no Python internals."""
    assert response.status_code in statuses, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"] and 'File "' not in body["error"]
    return body["error"]


async def assert_still_serving(mesh: HostileMesh) -> None:
    response = await mesh.http.post(INFER, json=GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [1, 2]


@bounded(60)
@given(rest_bodies() | hostile_json_bodies.map(lambda body: (body, None)))
async def test_hostile_bodies_are_4xx_json_errors_or_served(mesh: HostileMesh, body: tuple[bytes, int | None]) -> None:
    content, header_length = body
    headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    response = await mesh.http.post(INFER, content=content, headers=headers)
    if response.status_code != 200:
        assert_clean_error(response, (400, 413) if len(content) > MAX_MESSAGE_BYTES else (400,))
    await assert_still_serving(mesh)


@bounded(20)
@given(st.sampled_from(["a%00b", "a%0Ab", "%7F", "%C2%85", "x" * 600, "%ED%A0%80", "%FF"]))
async def test_model_names_no_model_can_have_are_400(mesh: HostileMesh, name: str) -> None:
    response = await mesh.http.post(f"/v2/models/{name}/infer", json=GOOD)
    assert_clean_error(response, (400, 404))
    await assert_still_serving(mesh)


async def test_a_model_name_with_a_control_character_is_400_naming_it(mesh: HostileMesh) -> None:
    response = await mesh.http.post("/v2/models/a%00b/infer", json=GOOD)
    assert "control character U+0000" in assert_clean_error(response)


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        ({}, b" " * (MAX_MESSAGE_BYTES + 1)),
        ({"Content-Encoding": "gzip"}, gzip.compress(b" " * (64 * MAX_MESSAGE_BYTES))),  # a decompression bomb
    ],
    ids=["plain", "gzip-bomb"],
)
async def test_bodies_over_the_limit_are_413_naming_the_limit(
    mesh: HostileMesh, headers: dict[str, str], content: bytes
) -> None:
    response = await mesh.http.post(INFER, content=content, headers=headers)
    message = assert_clean_error(response, (413,))
    assert f"Maximum request body size {MAX_MESSAGE_BYTES} exceeded, set by max_message_bytes" in message
    await assert_still_serving(mesh)


async def test_a_chunked_body_over_the_limit_is_413(mesh: HostileMesh) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(MAX_MESSAGE_BYTES // 65536 + 2):
            yield b" " * 65536

    response = await mesh.http.post(INFER, content=chunks())
    assert_clean_error(response, (413,))
    await assert_still_serving(mesh)


async def test_a_body_at_the_limit_is_served(mesh: HostileMesh) -> None:
    content = b'{"inputs":[{"name":"x","datatype":"INT8","shape":[1],"data":[1]}]}'
    response = await mesh.http.post(INFER, content=content.ljust(MAX_MESSAGE_BYTES))
    assert response.status_code == 200, response.text
