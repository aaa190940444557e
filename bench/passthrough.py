"""The floor for any Python gRPC proxy: forward every unary call's bytes to one upstream, parsing nothing.

A generic handler with identity (de)serializers, no metadata, no deadline propagation, no routing: what is left
is the cost of one grpc.aio server hop plus one grpc.aio client hop in a single Python process.

    python -m bench.passthrough --upstream 127.0.0.1:PORT --port-file FILE [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import grpc

from bench._serving import LOOPS, run_on, wait_for_stop, write_port_file

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def _identity(data: bytes) -> bytes:
    return data


class Forwarder(grpc.GenericRpcHandler):
    """Every method, whatever its name, goes to the same path on the upstream channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = self._handlers.get(details.method)
        if handler is None:
            call = self._channel.unary_unary(
                details.method, request_serializer=_identity, response_deserializer=_identity
            )
            handler = grpc.unary_unary_rpc_method_handler(functools.partial(_forward, call))
            self._handlers[details.method] = handler
        return handler


async def _forward(call: grpc.aio.UnaryUnaryMultiCallable, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return await call(request)


async def serve(upstream: str, port_file: Path) -> None:
    channel = grpc.aio.insecure_channel(upstream, options=MESSAGE_OPTIONS)
    server = grpc.aio.server(options=MESSAGE_OPTIONS)
    server.add_generic_rpc_handlers([Forwarder(channel)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    write_port_file(port_file, port)
    try:
        await wait_for_stop()
    finally:
        await server.stop(1.0)
        await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop (default asyncio)")
    args = parser.parse_args()
    run_on(args.loop, serve(args.upstream, args.port_file))


if __name__ == "__main__":
    main()
