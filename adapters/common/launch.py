"""Launching a model server as a child process: for an adapter run with --launch (one machine, no pod), and
for tests. In a pod the server is its own container and the adapter only connects to it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import httpx

from mesh.errors import Unavailable

log = logging.getLogger(__name__)


class ServerProcess:
    """A child process in a session of its own, so stopping it stops what it started (TorchServe's JVM outlives
    its launcher otherwise). Its output goes to a log file, named in errors."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, ready: Callable[[], Awaitable[bool]], timeout: float) -> None:
        """Start it and return once ready() is true; raise Unavailable (with the log's tail) if it exits first or
        is not ready within timeout seconds."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env=self.env, cwd=self.cwd,
                start_new_session=True,
            )  # fmt: skip
        log.info("started %s (pid %d): %s", self.name, self.process.pid, " ".join(self.argv))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await ready():
            if self.process.returncode is not None:
                raise Unavailable(f"{self.name} exited with {self.process.returncode} on start: {self.log_tail()}")
            if loop.time() > deadline:
                await self.stop()
                raise Unavailable(f"{self.name} was not ready within {timeout:.0f}s: {self.log_tail()}")
            await asyncio.sleep(0.2)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after grace seconds."""
        proc = self.process
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                break
            except TimeoutError:
                continue
        # The leader may be gone while a grandchild it started lives on in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.info("stopped %s", self.name)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports, for servers that cannot bind port 0 and say which port they got (MLServer,
    TorchServe and tritonserver all need theirs named up front). Another process may take one before the server
    binds it: launchers start again on new ports when the server fails to start. All are held at once, so they
    are distinct."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def http_ready(url: str) -> Callable[[], Awaitable[bool]]:
    """A readiness check: GET url answers 200."""

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    return ready
