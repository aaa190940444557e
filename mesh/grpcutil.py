"""gRPC server pieces shared by the router and the runtimes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from mesh.errors import MeshError

log = logging.getLogger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def maps_errors(
    method: Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """The one place a servicer's errors become statuses: a MeshError's own code and message; anything
    unexpected is logged with its traceback and is INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except MeshError as exc:
            await context.abort(exc.grpc_code, exc.message)
        except Exception as exc:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


class _Unparseable:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class RejectUnparseable(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT, naming the method, for a request body that does not parse.

    Left alone, grpc fails the call with UNKNOWN ("Unexpected DecodeError") before any servicer code runs, which
    tells a client nothing and blames the server. Handlers that take raw bytes (the router's inference path)
    have no deserializer and pass through untouched.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.unary_unary is None:
            return handler
        return _lenient(handler, handler_call_details.method)


def _lenient(handler: Any, method: str) -> grpc.RpcMethodHandler:
    deserialize = handler.request_deserializer
    behavior = handler.unary_unary

    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or a string field that is not UTF-8
            return _Unparseable(exc)

    async def call(request: object, context: grpc.aio.ServicerContext) -> object:
        if isinstance(request, _Unparseable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unparseable {method} request: {request.error}")
        return await behavior(request, context)

    return handler._replace(request_deserializer=parse, unary_unary=call)
