"""The engine's request log read back (mesh/engine/request_log.py): its lines, as HAProxy writes them for the
format in haproxy_config.REQUEST_LOG_FORMAT, and the gRPC status each stands for."""

from __future__ import annotations

import grpc
import pytest

from mesh.engine.haproxy_config import REQUEST_LOG_FORMAT
from mesh.engine.request_log import EngineRequest, grpc_code, parse_line

INFER = "/inference.GRPCInferenceService/ModelInfer"


def test_the_format_has_the_fields_the_parser_reads() -> None:
    assert len(REQUEST_LOG_FORMAT.split()) == 7


def test_a_served_request_is_its_model_method_and_elapsed_time() -> None:
    line = f"m 1796224107442284 1796224107443584 200 - ---- {INFER}\n"
    assert parse_line(line) == EngineRequest("m", INFER.removeprefix("/"), grpc.StatusCode.OK, 1.3)


@pytest.mark.parametrize(
    ("http_status", "grpc_status", "termination", "code"),
    [
        ("200", "-", "----", grpc.StatusCode.OK),  # a status in trailers: the answer went through whole
        ("200", "14", "----", grpc.StatusCode.UNAVAILABLE),  # a trailers-only answer says its status itself
        ("200", "5", "----", grpc.StatusCode.NOT_FOUND),
        ("200", "-", "SD--", grpc.StatusCode.UNAVAILABLE),  # the runtime's connection broke mid-answer
        ("503", "-", "SC--", grpc.StatusCode.UNAVAILABLE),  # no runtime answered
        ("200", "99", "----", grpc.StatusCode.OK),  # a status no gRPC has: what the answer looked like
    ],
)
def test_the_grpc_status_is_what_the_engine_saw(
    http_status: str, grpc_status: str, termination: str, code: grpc.StatusCode
) -> None:
    assert grpc_code(http_status, grpc_status, termination) is code


@pytest.mark.parametrize("line", ["", "m 1 2 200 - ----", "m x 2 200 - ---- /p", "m 1 2 200 - ---- /p extra"])
def test_lines_that_are_not_requests_are_none(line: str) -> None:
    assert parse_line(line) is None


def test_an_absolute_uri_is_its_path() -> None:
    request = parse_line(f"m 1 2 200 - ---- http://127.0.0.1:8033{INFER}")
    assert request is not None and request.method == INFER.removeprefix("/")


def test_an_answer_dated_before_its_request_is_zero_ms() -> None:
    request = parse_line(f"m 1000 999 200 - ---- {INFER}")
    assert request is not None and request.elapsed_ms == 0
