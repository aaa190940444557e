"""The access log of the requests the native engine routed itself: HAProxy sends one line per request to a unix
datagram socket (haproxy_config.access_log_lines); each becomes a `mesh.access` line like those of the requests
mesh's doors forward (mesh/access_log.py), so one log holds every request, whichever part served it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from mesh import access_log
from mesh.access_log import AccessNote

log = logging.getLogger(__name__)

GRPC_CODES = {code.value[0]: code.name for code in grpc.StatusCode}


def access_line(line: str) -> tuple[str, str, str, float, int, int, str] | None:
    """(model, backend, code, ms, bytes in, bytes out, path) of one engine line; None for one it cannot read (the
    engine also sends its own notices there, such as a proxy stopping)."""
    fields = line.strip().split(" ")
    if len(fields) != 8:
        return None
    model, backend, http_status, grpc_status, ms, received, sent, path = fields
    try:
        if grpc_status not in ("", "-"):
            code = GRPC_CODES.get(int(grpc_status), f"GRPC_{grpc_status}")
        else:
            code = "OK" if http_status == "200" else f"HTTP_{http_status}"
        return model, backend, code, float(ms), int(received), int(sent), path
    except ValueError:
        return None


class EngineAccessLog(asyncio.DatagramProtocol):
    """Receives the engine's lines and writes them to the access log."""

    def __init__(self, instance_of: Callable[[str], str], size_of: Callable[[str], int]) -> None:
        self._instance_of = instance_of
        self._size_of = size_of
        self._transport: asyncio.DatagramTransport | None = None

    async def open(self, path: Path, shared: bool) -> None:
        """Bind the socket the engine sends to (shared: a sidecar under another user may write to it)."""
        await asyncio.to_thread(_remove, path)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=str(path), family=socket.AF_UNIX
        )
        if shared:
            await asyncio.to_thread(path.chmod, 0o666)

    def datagram_received(self, data: bytes, addr: object) -> None:
        parsed = access_line(data.decode("utf-8", errors="replace"))
        if parsed is None:
            log.debug("engine access line not understood: %r", data[:200])
            return
        model, backend, code, ms, received, sent, path = parsed
        note = AccessNote(model, self._instance_of(backend), hit=True)
        # The engine measured the time; write() measures from `started`: set it that far back.
        started = time.perf_counter() - ms / 1000
        access_log.write(path, model, note, code, started, received, sent, self._size_of(model))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
