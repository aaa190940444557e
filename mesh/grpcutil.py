"""gRPC server pieces shared by the router and the runtimes."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from mesh.errors import MeshError, Overloaded

log = logging.getLogger(__name__)

# A unary handler's behavior, and a decorator of one given the method path (e.g. one that measures calls).
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
WrapBehavior = Callable[[str, Behavior], Behavior]


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def retry_hints(retry_after_s: float) -> tuple[tuple[str, str], ...]:
    """When to try again, as gRPC trailers: `retry-after` (whole seconds, as HTTP's) and gRPC's own retry pushback."""
    return (
        ("retry-after", str(max(math.ceil(retry_after_s), 1))),
        ("grpc-retry-pushback-ms", str(round(retry_after_s * 1000))),
    )


def maps_errors(handler: Handler) -> Handler:
    """The one place a gRPC handler's errors become statuses, for every handler in mesh (servicer methods, the
    router's generic handlers, the runtimes'): a MeshError's own code and message; anything unexpected is logged
    with its traceback and is INTERNAL. The handler's last argument is its ServicerContext."""

    @functools.wraps(handler)
    async def wrapper(*args: Any) -> Any:
        context: grpc.aio.ServicerContext = args[-1]
        try:
            return await handler(*args)
        except grpc.aio.AbortError:
            raise
        except Overloaded as exc:
            context.set_trailing_metadata(retry_hints(exc.retry_after_s))
            await context.abort(exc.grpc_code, exc.message)
        except MeshError as exc:
            await context.abort(exc.grpc_code, exc.message)
        except Exception as exc:
            log.exception("unexpected error in %s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper  # type: ignore[return-value]


class _Unparseable:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class RejectingUnparseable:
    """A server to hand to a generated `add_XServicer_to_server`: its protobuf handlers answer INVALID_ARGUMENT,
    naming the method, for a request body that does not parse.

    Left alone, grpc fails such a call with UNKNOWN ("Unexpected DecodeError") before any servicer code runs,
    which tells a client nothing and blames the server. Wrapping the handlers once at registration costs the
    calls nothing; an interceptor would add a coroutine to every call, the raw-bytes inference path included.
    `wrap`, when given, decorates each unary handler outermost, so it sees those rejections too (metrics do).
    """

    def __init__(self, server: grpc.aio.Server, wrap: WrapBehavior | None = None) -> None:
        self._server = server
        self._wrap = wrap

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # generated code registers the same handlers below, by name, where they can be wrapped

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {name: _lenient(handler, f"/{service}/{name}", self._wrap) for name, handler in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self._server.add_registered_method_handlers(service, wrapped)


def _lenient(handler: Any, method: str, wrap: WrapBehavior | None) -> grpc.RpcMethodHandler:
    if handler.request_deserializer is None or handler.unary_unary is None:
        return handler
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

    return handler._replace(request_deserializer=parse, unary_unary=wrap(method, call) if wrap else call)
