"""Where the HAProxy engine's process comes from: a child of mesh, or a sidecar container beside it.

- ChildProcess: mesh starts haproxy itself with the public ports' listening sockets (inherited descriptors), so a
  restart after a crash serves the same ports at once; the kernel stops it when mesh dies.
- Sidecar: a haproxy run by someone else (the router pod's engine container, official image) in master-worker mode,
  sharing the engine's directory (an emptyDir): its config and maps, its runtime-API socket and its master socket.
  mesh "starts" it by asking the master to reload the config it just wrote, and sees it exit when its worker no
  longer answers or answers as another process (the container restarted).

Both answer the same few calls (EngineProcess); HAProxyEngine (haproxy.py) writes the files before each start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import shutil
import signal
import time
from dataclasses import dataclass
from typing import Protocol

from mesh.engine.driver import EngineError
from mesh.engine.haproxy_api import RuntimeAPI
from mesh.engine.haproxy_config import EngineFiles

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
SIDECAR_START_TIMEOUT_S = 60.0
"""How long mesh waits for a sidecar engine to answer: the pod's containers start together, in no set order."""
SIDECAR_PROBE_S = 1.0
STOP_GRACE_S = 5.0
OUTPUT_DRAIN_S = 2.0
EXITED = -1
"""The exit code reported for a sidecar engine that stopped answering (its code is its container's)."""


def sidecar_command(directory: str, binary: str = "haproxy") -> list[str]:
    """The engine container's command (deploy/, the controller's runtime pods, the tests): wait for mesh's config in
    the shared directory, then run haproxy on it in master-worker mode, with the master socket mesh reloads it
    through (open to the pod's other users: mesh's container may run as another user)."""
    d, haproxy = shlex.quote(directory.rstrip("/")), shlex.quote(binary)
    script = (
        f"until [ -f {d}/haproxy.cfg ]; do sleep 0.2; done; "
        f"exec {haproxy} -W -db -S {d}/master.sock,mode,666 -f {d}/haproxy.cfg"
    )
    return ["sh", "-c", script]


class EngineProcess(Protocol):
    async def start(self, config: str) -> None:
        """Have an engine serve the config on disk (`config`: the token in its description), and return once its
        runtime API answers."""

    async def stop(self) -> None: ...

    def running(self) -> bool: ...

    def pid(self) -> int | None: ...

    async def wait_exit(self) -> int:
        """Wait until the engine serving the config exits; its exit code."""


def dies_with_mesh(argv: list[str]) -> list[str]:
    """The engine's command line, run so that the kernel sends it SIGTERM when mesh dies, however mesh dies (SIGKILL
    included), so no engine outlives mesh and holds its ports (Linux's PR_SET_PDEATHSIG, set by util-linux's
    setpriv, which then execs HAProxy). Not a preexec_fn: Python code between fork and exec can deadlock the child
    in a process with threads (gRPC's), and the parent waits for that exec with its event loop blocked."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("data plane: no setpriv (util-linux); the engine may outlive a router that is killed")
        return argv
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


async def relay_output(stream: asyncio.StreamReader) -> None:
    """HAProxy's messages, into mesh's log: alerts as errors, servers going down as warnings, the rest (servers
    added, proxies stopping on a soft stop) at debug level."""
    async for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        if "[ALERT]" in line or "[EMERG]" in line:
            log.error("haproxy: %s", line)
        elif " is DOWN" in line:
            log.warning("haproxy: %s", line)
        elif line:
            log.debug("haproxy: %s", line)


class ChildProcess:
    def __init__(self, binary: str, files: EngineFiles, inherited_fds: tuple[int, ...] = ()) -> None:
        self._binary = binary
        self._files = files
        self._inherited = inherited_fds
        self._api = RuntimeAPI(files.admin_socket)
        self._process: asyncio.subprocess.Process | None = None
        self._output: asyncio.Task[None] | None = None

    async def start(self, config: str) -> None:
        """A new haproxy on the config (its token is not checked: the process was started on that file)."""
        self._files.admin_socket.unlink(missing_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            *dies_with_mesh([self._binary, "-db", "-f", str(self._files.config)]),
            pass_fds=self._inherited,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self._process.stdout is not None
        self._output = asyncio.create_task(relay_output(self._process.stdout), name="engine-output")
        await self._wait_answering()
        log.info("data-plane engine haproxy started (pid %d)", self._process.pid)

    async def _wait_answering(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.returncode is not None:
                code = self._process.returncode
                raise EngineError(f"haproxy exited with {code} on start (config {self._files.config})")
            if self._files.admin_socket.exists():
                with contextlib.suppress(OSError):
                    await self._api.run("show info")
                    return
            if time.monotonic() > deadline:
                raise EngineError(f"haproxy did not answer on {self._files.admin_socket} within {START_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.02)

    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def pid(self) -> int | None:
        return self._process.pid if self.running() else None  # type: ignore[union-attr]

    async def wait_exit(self) -> int:
        assert self._process is not None
        return await self._process.wait()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGUSR1)  # soft stop: requests in flight finish
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        output, self._output = self._output, None
        if output is not None:
            # The pipe ends when HAProxy has exited; bounded all the same, so that a stop cannot wait forever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(output, OUTPUT_DRAIN_S)


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Which haproxy worker answers the runtime API, and from which config (its `description`, a token written
    with each config): a reload or a restart changes the worker. The start time is part of it because a restarted
    container numbers its processes the same way again."""

    pid: int
    started: int
    config: str


def worker_identity(show_info: str) -> WorkerIdentity | None:
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in show_info.splitlines() if ": " in line)}
    try:
        return WorkerIdentity(int(fields["pid"]), int(fields["start_time_sec"]), fields.get("description", ""))
    except (KeyError, ValueError):
        return None


class Sidecar:
    def __init__(self, files: EngineFiles, start_timeout_s: float = SIDECAR_START_TIMEOUT_S) -> None:
        self._files = files
        self._api = RuntimeAPI(files.admin_socket)
        self._master = RuntimeAPI(files.master_socket)
        self._start_timeout_s = start_timeout_s
        self._serving: WorkerIdentity | None = None

    async def _identity(self) -> WorkerIdentity | None:
        try:
            return worker_identity(await self._api.run("show info"))
        except (OSError, TimeoutError):
            return None

    async def start(self, config: str) -> None:
        """Return once the sidecar's worker serves the config on disk (`config`: its description token): a worker
        serving another (an older mesh's, or a stale file it found on start) is reloaded through the master socket
        (the master re-reads the config and starts a new worker; the old one finishes its requests); a sidecar not
        started yet is waited for."""
        self._serving = None
        reloaded: WorkerIdentity | None = None
        master_refused: Exception | None = None
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            now = await self._identity()
            if now is not None and now.config == config:
                self._serving = now
                log.info("data-plane engine: sidecar haproxy serves mesh's config (worker pid %d)", now.pid)
                return
            if now is not None and now != reloaded:
                try:
                    await self._master.run("reload")
                    reloaded, master_refused = now, None
                except (OSError, TimeoutError) as exc:  # a master still starting, or none: asked again
                    master_refused = exc
            if time.monotonic() > deadline:
                raise EngineError(self._not_serving(master_refused))
            await asyncio.sleep(0.05)

    def _not_serving(self, master_refused: Exception | None) -> str:
        if master_refused is not None:
            return (
                f"the engine sidecar answers on {self._files.admin_socket} but its master socket "
                f"{self._files.master_socket} does not ({master_refused}): run it as sidecar_command() does "
                f"(haproxy -W -S {self._files.master_socket})"
            )
        return (
            f"no engine sidecar served mesh's config on {self._files.admin_socket} within {self._start_timeout_s:.0f}s"
        )

    def running(self) -> bool:
        return self._serving is not None

    def pid(self) -> int | None:
        return self._serving.pid if self._serving is not None else None

    async def wait_exit(self) -> int:
        while self._serving is not None:
            await asyncio.sleep(SIDECAR_PROBE_S)
            if self._serving is not None and await self._identity() != self._serving:
                log.warning("data-plane engine: the sidecar's worker %d is gone", self._serving.pid)
                self._serving = None
        return EXITED

    async def stop(self) -> None:
        """The sidecar is not mesh's to stop: it keeps serving the routes it has (loaded models stay reachable
        while mesh restarts) until the next mesh reloads it."""
        self._serving = None
