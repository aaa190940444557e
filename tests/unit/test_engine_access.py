"""The engine's access lines (mesh/engine/access.py) as HAProxy writes them (haproxy_config.ACCESS_FORMAT)."""

from __future__ import annotations

import pytest

from mesh.engine.access import access_line

PATH = "/inference.GRPCInferenceService/ModelInfer"


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (f"m rt_0 200 - 2 306 157 {PATH}\n", "OK"),  # grpc-status in the trailers: the engine does not see it
        (f"m rt_0 200 14 2 306 0 {PATH}", "UNAVAILABLE"),  # a trailers-only answer names its status
        (f"m rt_0 503 - 2 306 0 {PATH}", "HTTP_503"),
    ],
)
def test_a_line_gives_the_model_backend_status_time_and_sizes(line: str, code: str) -> None:
    model, backend, found, ms, received, _, path = access_line(line)  # type: ignore[misc]
    assert (model, backend, found, ms, received, path) == ("m", "rt_0", code, 2.0, 306, PATH)


@pytest.mark.parametrize("line", ["Proxy grpc stopped (cumulated conns: FE: 1, BE: 0).", "m rt_0 200 - x 1 2 /p", ""])
def test_a_line_it_cannot_read_is_none(line: str) -> None:
    assert access_line(line) is None
