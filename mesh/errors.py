"""The one error hierarchy of mesh. Each class carries its gRPC code; HTTP codes come from one table.

Transports map errors at one boundary each (mesh/proxy/grpc_server.py, mesh/proxy/rest_server.py) and match on
type, never on message text.
"""

from __future__ import annotations

import grpc


class MeshError(Exception):
    """Base class: a message meant for the caller, and the status it travels with."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MeshError):
    """The request is malformed: bad JSON, wrong datatype, shape/data mismatch, unparseable protobuf."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(MeshError):
    """No model or vmodel is registered under the name."""

    grpc_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, name: str, kind: str = "model") -> None:
        super().__init__(f"{kind} '{name}' is not registered")
        self.name = name


class AlreadyExists(MeshError):
    """A registration conflicts with an existing one that has different content."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class ModelLoadFailed(MeshError):
    """The runtime could not load the model; not retried until the failure's backoff has passed."""

    grpc_code = grpc.StatusCode.INTERNAL


class NoCapacity(MeshError):
    """No runtime instance can hold the model (type unsupported, or larger than any instance)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(MeshError):
    """Retryable: the model is loading, a runtime is gone, or the router is not ready."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(MeshError):
    """The method exists, but not for this model (a ModelStreamInfer to a model that does not stream)."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Overloaded(MeshError):
    """Retryable later: serving this now would push out models in use (the thrash guard, placement/thrash.py).
    retry_after_s travels with it: a `retry-after` trailer and `grpc-retry-pushback-ms` (gRPC's own retry
    hint) on gRPC, a Retry-After header on REST."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(MeshError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status for a gRPC code (500 for anything not in the table)."""
    return HTTP_STATUS.get(code, 500)


class RuntimeFailure(MeshError):
    """A runtime answered a forwarded call with an error status; the code and message pass through."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.grpc_code = code


class Conflict(MeshError):
    """The request contradicts current state: a model still used by a vmodel, an unexpected target."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
