"""The HAProxy engine: one haproxy process, its instance backends and route maps, changed over the runtime API.

The process is started with the listening sockets of the public ports (inherited descriptors), so a restart after
a crash serves the same ports at once. What it routes lives in mesh: each start writes the config with the
instance servers and the map files with the routes it had, so the new process starts where the old one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import signal
import time
from collections.abc import Mapping

from mesh.engine.driver import ModelTraffic
from mesh.engine.haproxy_api import RuntimeAPI, RuntimeAPIError
from mesh.engine.haproxy_config import (
    BACKEND_PREFIX,
    COPIES_TABLE,
    MAPS,
    PICK_LUA,
    USAGE_TABLE,
    HAProxyLayout,
    render,
)
from mesh.engine.routes import RouteSet, RouteUpdate

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_GRACE_S = 5.0
OUTPUT_DRAIN_S = 2.0
USAGE_EXPIRE_MS = 24 * 3600 * 1000
"""The usage table's `expire`: an entry's remaining time says how long ago it was last tracked."""
CLOCK_SLACK_MS = 2
"""HAProxy's clock ticks in milliseconds and is read when its event loop wakes, so a use read off an entry's expiry
can come out a tick or two before it happened: last uses are dated this much later (never after the reading), so
that none is dated before the request that made it."""


class EngineError(RuntimeError):
    """The engine could not be started or changed."""


def find_haproxy(name: str = "haproxy") -> str | None:
    """The haproxy binary's path, or None when it is not installed."""
    return shutil.which(name)


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


class HAProxyEngine:
    def __init__(self, binary: str, layout: HAProxyLayout, inherited_fds: tuple[int, ...] = ()) -> None:
        self._binary = binary
        self._layout = layout
        self._files = layout.files
        self._inherited = inherited_fds
        self._api = RuntimeAPI(layout.files.admin_socket)
        self._process: asyncio.subprocess.Process | None = None
        self._slots: dict[str, int] = {}
        self._endpoints: dict[str, str] = {}
        self._maps: dict[str, dict[str, str]] = {name: {} for name in MAPS}
        self._output: asyncio.Task[None] | None = None

    # ---- the process -------------------------------------------------------------------------------------

    async def start(self) -> None:
        files = self._files
        files.directory.mkdir(parents=True, exist_ok=True)
        files.lua.write_text(PICK_LUA)
        for name, entries in self._maps.items():
            files.map(name).write_text("".join(f"{k} {v}\n" for k, v in entries.items()))
        servers = tuple((slot, self._endpoints[i]) for i, slot in self._slots.items())
        files.config.write_text(render(dataclasses.replace(self._layout, servers=servers)))
        files.admin_socket.unlink(missing_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            *dies_with_mesh([self._binary, "-db", "-f", str(files.config)]),
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

    async def restart(self) -> None:
        await self.start()

    def pid(self) -> int | None:
        return self._process.pid if self.running() else None  # type: ignore[union-attr]

    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

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

    # ---- instances and routes ----------------------------------------------------------------------------

    async def set_instances(self, endpoints: Mapping[str, str]) -> None:
        """endpoints: instance id → IP:PORT (resolve names first: HAProxy takes addresses at run time)."""
        gone = [i for i, e in self._endpoints.items() if endpoints.get(i) != e]
        new = [i for i, e in endpoints.items() if self._endpoints.get(i) != e]
        commands: list[str] = []
        for instance_id in gone:
            slot = self._slots.pop(instance_id)
            del self._endpoints[instance_id]
            commands += self._unroute(f"{BACKEND_PREFIX}{slot}")
            server = f"{BACKEND_PREFIX}{slot}/rt"
            commands += [f"set server {server} state maint", f"shutdown sessions server {server}"]
        free = sorted(set(range(self._layout.slots)) - set(self._slots.values()))
        for instance_id in new:
            if not free:
                log.warning("data plane: no backend slot left for instance %s; mesh's door serves it", instance_id)
                continue
            slot = free.pop(0)
            self._slots[instance_id] = slot
            self._endpoints[instance_id] = endpoints[instance_id]
            host, port = endpoints[instance_id].rsplit(":", 1)
            server = f"{BACKEND_PREFIX}{slot}/rt"
            commands += [f"set server {server} addr {host.strip('[]')} port {port}", f"set server {server} state ready"]
        if commands:
            await self._api.run_all(commands)

    def _unroute(self, backend: str) -> list[str]:
        """Commands taking a backend out of every route (before its slot can serve another instance)."""
        commands = []
        for name in ("by_name", "by_header"):
            path, current = self._files.map(name), self._maps[name]
            for key, value in list(current.items()):
                backends = value.split(",")
                if backend not in backends:
                    continue
                rest = ",".join(b for b in backends if b != backend)
                if rest:
                    current[key] = rest
                    commands.append(f"set map {path} {key} {rest}")
                else:
                    del current[key]
                    commands.append(f"del map {path} {key}")
        return commands

    async def set_routes(self, routes: RouteSet) -> None:
        maps = self._maps
        await self.update_routes(
            RouteUpdate(
                {k: routes.by_name.get(k, ()) for k in maps["by_name"].keys() | routes.by_name.keys()},
                {k: routes.by_header.get(k, ()) for k in maps["by_header"].keys() | routes.by_header.keys()},
                {k: routes.vmodels.get(k) for k in maps["vmodels"].keys() | routes.vmodels.keys()},
            )
        )

    async def update_routes(self, update: RouteUpdate) -> None:
        wanted = {
            "by_name": {k: self._backends(copies) for k, copies in update.by_name.items()},
            "by_header": {k: self._backends(copies) for k, copies in update.by_header.items()},
            "vmodels": dict(update.vmodels),
        }
        commands: list[str] = []
        for name, entries in wanted.items():
            path, current = self._files.map(name), self._maps[name]
            for key, value in entries.items():
                before = current.get(key)
                if value == before:
                    continue
                if value is None:
                    commands.append(f"del map {path} {key}")
                elif before is None:
                    commands.append(f"add map {path} {key} {value}")
                else:
                    commands.append(f"set map {path} {key} {value}")
        if not commands:
            return
        try:
            await self._api.run_all(commands)
        except RuntimeAPIError as exc:
            raise EngineError(str(exc)) from exc
        for name, entries in wanted.items():
            current = self._maps[name]
            for key, value in entries.items():
                if value is None:
                    current.pop(key, None)
                else:
                    current[key] = value

    def _backends(self, copies: tuple[str, ...]) -> str | None:
        """The copies' backends joined by ',' (copies on instances without a slot left out); None: no copy."""
        backends = [f"{BACKEND_PREFIX}{self._slots[i]}" for i in copies if i in self._slots]
        return ",".join(backends) if backends else None

    # ---- what the engine saw -----------------------------------------------------------------------------

    async def traffic(self) -> dict[str, ModelTraffic]:
        entries = await self._api.table(USAGE_TABLE)
        now = int(time.time() * 1000)
        return {
            e.key: ModelTraffic(e.data.get("http_req_cnt", 0), e.in_use, self._last_use(e.expires_in_ms, now))
            for e in entries
        }

    @staticmethod
    def _last_use(expires_in_ms: int, now_ms: int) -> int:
        return min(now_ms, now_ms - (USAGE_EXPIRE_MS - expires_in_ms) + CLOCK_SLACK_MS)

    async def copy_in_flight(self, model_id: str, instance_id: str) -> int:
        slot = self._slots.get(instance_id)
        if slot is None:
            return 0
        entries = await self._api.table(COPIES_TABLE, f"{model_id}@{BACKEND_PREFIX}{slot}")
        return sum(e.in_use for e in entries)
