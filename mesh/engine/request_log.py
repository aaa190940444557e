"""The latency of the requests the engine served itself, into the router's request metrics.

HAProxy writes one line per natively routed request (haproxy_config.REQUEST_LOG_FORMAT) as a datagram to a unix
socket mesh listens on: the model, when the request arrived and when its answer was sent (µs), the HTTP status, the
grpc-status header, the termination state and the path. mesh observes each in modelmesh_api_request_milliseconds,
as its own doors do for theirs; requests the engine handed to mesh's doors are not logged (the doors count them).

A datagram socket, because a log line must never hold up the engine: when mesh falls behind, the kernel drops lines
(the request counts, from the engine's stick table, stay exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc

from mesh.metrics import RouterMetrics, method_label

log = logging.getLogger(__name__)

_CODES = {str(code.value[0]): code for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class EngineRequest:
    model: str
    method: str
    code: grpc.StatusCode
    elapsed_ms: float


def grpc_code(http_status: str, grpc_status: str, termination: str) -> grpc.StatusCode:
    """The call's gRPC status as far as the engine saw it. A status sent in the response's headers (a trailers-only
    answer: errors) is exact; one sent in trailers the engine does not log, so an answer that went through whole
    (HTTP 200, termination state `--`) counts as OK; a connection that broke, or another HTTP status, as the
    client saw it: UNAVAILABLE."""
    code = _CODES.get(grpc_status)
    if code is not None:
        return code
    if http_status == "200" and termination.startswith("--"):
        return grpc.StatusCode.OK
    return grpc.StatusCode.UNAVAILABLE


def parse_line(line: str) -> EngineRequest | None:
    """One logged request (haproxy_config.REQUEST_LOG_FORMAT), or None for a line that is not one."""
    parts = line.split()
    if len(parts) != 7:
        return None
    model, arrived_us, answered_us, http_status, grpc_status, termination, path = parts
    if not (arrived_us.isdigit() and answered_us.isdigit()):
        return None
    elapsed_ms = max(int(answered_us) - int(arrived_us), 0) / 1000
    if "://" in path:  # HTTP/2 requests are logged with their absolute URI
        path = path[path.find("/", path.find("://") + 3) :]
    return EngineRequest(model, method_label(path), grpc_code(http_status, grpc_status, termination), elapsed_ms)


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, metrics: RouterMetrics) -> None:
        self._metrics = metrics
        self.malformed = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        request = parse_line(data.decode(errors="replace"))
        if request is None:
            self.malformed += 1
            return
        self._metrics.request_took(request.method, request.code, request.elapsed_ms, request.model)


class EngineRequestLog:
    """The socket the engine logs its requests to, observed into `metrics` while open."""

    def __init__(self, path: Path, metrics: RouterMetrics, shared: bool = False) -> None:
        self._path = path
        self._metrics = metrics
        self._shared = shared
        self._transport: asyncio.DatagramTransport | None = None
        self._receiver: _Receiver | None = None

    async def open(self) -> None:
        self._path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(self._path))
            if self._shared:  # a sidecar engine writes as another user
                os.chmod(self._path, 0o666)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        except BaseException:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        self._transport, self._receiver = await loop.create_datagram_endpoint(
            lambda: _Receiver(self._metrics), sock=sock
        )

    @property
    def malformed(self) -> int:
        return self._receiver.malformed if self._receiver is not None else 0

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        with contextlib.suppress(OSError):
            self._path.unlink(missing_ok=True)
