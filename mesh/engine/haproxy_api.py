"""HAProxy's runtime API: commands over its admin socket, and the stick-table listing parsed.

One connection per batch: HAProxy runs the commands of one line, separated by ';', in order, and closes the
connection after answering (non-interactive mode). Batches are bounded so that a line stays well under HAProxy's
command buffer (tune.bufsize).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mesh.engine.driver import LatencyCounts

BATCH_BYTES = 8192
API_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 4
"""Commands in flight at once on one socket: HAProxy serves its stats socket to 10 clients at a time by default."""

_ENTRY = re.compile(r"^0x[0-9a-f]+: key=(\S+) use=(\d+) exp=(\d+)(.*)$")
_DATA = re.compile(r"(\w+(?:\(\d+\))?)=(\d+)")


class RuntimeAPIError(RuntimeError):
    """HAProxy refused a command."""


@dataclass(frozen=True, slots=True)
class TableEntry:
    key: str
    in_use: int
    """Streams tracking the entry now: requests in flight."""
    expires_in_ms: int
    data: dict[str, int]


def parse_table(text: str) -> list[TableEntry]:
    """The entries of a `show table NAME` answer."""
    entries = []
    for line in text.splitlines():
        match = _ENTRY.match(line)
        if match is None:
            continue
        key, use, exp, rest = match.groups()
        entries.append(TableEntry(key, int(use), int(exp), {k: int(v) for k, v in _DATA.findall(rest)}))
    return entries


def parse_latency(text: str) -> list[LatencyCounts]:
    """The lines of a `mesh latency` answer (the engine's Lua: model, path, code, count, sum, buckets)."""
    counts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or not all(p.isdigit() for p in parts[2:]):
            continue
        model, path, code, count, sum_us, *buckets = parts
        counts.append(LatencyCounts(model, path, int(code), int(count), int(sum_us), tuple(int(b) for b in buckets)))
    return counts


def batches(commands: Iterable[str], limit: int = BATCH_BYTES) -> Iterator[list[str]]:
    """Commands grouped into lines of at most `limit` bytes (one command longer than that is a batch alone)."""
    batch: list[str] = []
    size = 0
    for command in commands:
        if batch and size + len(command) + 1 > limit:
            yield batch
            batch, size = [], 0
        batch.append(command)
        size += len(command) + 1
    if batch:
        yield batch


class RuntimeAPI:
    def __init__(self, socket_path: Path, connections: int = MAX_CONNECTIONS) -> None:
        self._path = socket_path
        self._connections = asyncio.Semaphore(connections)

    async def run(self, command: str) -> str:
        """One command line (commands separated by ';'); HAProxy's answer. Bounded by API_TIMEOUT_S as a whole: an
        engine that stopped answering fails the call instead of holding whoever asked (the control loop, a stop)."""
        async with self._connections, asyncio.timeout(API_TIMEOUT_S):
            reader, writer = await self._connect()
            try:
                writer.write(command.encode() + b"\n")
                await writer.drain()
                return (await reader.read()).decode(errors="replace")
            finally:
                writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the socket. A full accept queue (other clients of the socket, beyond HAProxy's `stats
        maxconn`) refuses a unix-socket connect with EAGAIN rather than making it wait: that is tried again, until
        the caller's timeout; a socket nobody listens on fails at once. The connect is made here, not by the event
        loop: asyncio takes EAGAIN for a connection in progress and hands back one that is not connected, and
        uvloop raises it."""
        delay = 0.001
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(self._path))  # a unix socket connects at once, or not at all
            except BlockingIOError:
                sock.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            except BaseException:
                sock.close()
                raise
            return await asyncio.open_unix_connection(sock=sock)

    async def run_with_payload(self, command: str, payload: str) -> None:
        """A command that takes a multi-line payload (a certificate, say); raises if HAProxy refused it."""
        body = payload.strip("\n")
        answer = await self.run(f"{command} <<\n{body}\n")
        refused = _refusal(answer)
        if refused:
            raise RuntimeAPIError(f"HAProxy refused {command!r}: {refused}")

    async def run_all(self, commands: Iterable[str]) -> None:
        """Every command, in order, in batches; raises on the first that HAProxy refused."""
        for batch in batches(commands):
            answer = await self.run(";".join(batch))
            refused = _refusal(answer)
            if refused:
                raise RuntimeAPIError(f"HAProxy refused a command of {batch[0]!r}...: {refused}")

    async def table(self, name: str, key: str | None = None) -> list[TableEntry]:
        command = f"show table {name}" + (f" key {key}" if key is not None else "")
        return parse_table(await self.run(command))


_REFUSALS = ("unknown", "not found", "invalid", "error", "require", "cannot", "can't", "failed", "no such", "denied")


def _refusal(answer: str) -> str:
    """The first line of an answer that reports a refusal ("" when every command succeeded)."""
    for line in answer.splitlines():
        lowered = line.lower()
        if any(word in lowered for word in _REFUSALS):
            return line.strip()
    return ""
