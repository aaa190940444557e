"""The HAProxy engine: its instance backends and route maps, changed over the runtime API, and the files its process
starts from.

What it routes lives in mesh: each start writes the config with the instance servers and the map files with the
routes it had, so a new process (a restart after a crash, a sidecar reloaded) starts where the old one stopped.
Where the process comes from (a child of mesh, or a sidecar container) is haproxy_process.py's concern.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from mesh.engine.driver import EngineError, LatencyCounts, ModelTraffic
from mesh.engine.haproxy_api import RuntimeAPI, RuntimeAPIError, parse_latency
from mesh.engine.haproxy_config import (
    BACKEND_PREFIX,
    COPIES_TABLE,
    MAPS,
    MESH_LUA,
    USAGE_TABLE,
    HAProxyLayout,
    render,
)
from mesh.engine.haproxy_process import EngineProcess
from mesh.engine.routes import RouteSet, RouteUpdate

log = logging.getLogger(__name__)

USAGE_EXPIRE_MS = 24 * 3600 * 1000
"""The usage table's `expire`: an entry's remaining time says how long ago it was last tracked."""
CLOCK_SLACK_MS = 2
"""HAProxy's clock ticks in milliseconds and is read when its event loop wakes, so a use read off an entry's expiry
can come out a tick or two before it happened: last uses are dated this much later (never after the reading), so
that none is dated before the request that made it."""


def find_haproxy(name: str = "haproxy") -> str | None:
    """The haproxy binary's path, or None when it is not installed."""
    return shutil.which(name)


def write_atomically(path: Path, text: str) -> None:
    """A sidecar engine may read the file at any moment: it sees the old one or the new one, never a part."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


class HAProxyEngine:
    def __init__(self, layout: HAProxyLayout, process: EngineProcess) -> None:
        self._layout = layout
        self._files = layout.files
        self._process = process
        self._api = RuntimeAPI(layout.files.admin_socket)
        self._slots: dict[str, int] = {}
        self._endpoints: dict[str, str] = {}
        self._maps: dict[str, dict[str, str]] = {name: {} for name in MAPS}

    # ---- the process -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Write the engine's files with the instances and routes mesh has given it, then have a process serve
        them: the config last, so that a sidecar waiting for it finds the rest in place."""
        files = self._files
        files.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(files.lua, MESH_LUA)
        for name, entries in self._maps.items():
            write_atomically(files.map(name), "".join(f"{k} {v}\n" for k, v in entries.items()))
        servers = tuple((slot, self._endpoints[i]) for i, slot in self._slots.items())
        generation = f"mesh-config-{secrets.token_hex(8)}"
        layout = dataclasses.replace(self._layout, servers=servers, generation=generation)
        write_atomically(files.config, render(layout))
        await self._process.start(generation)

    async def restart(self) -> None:
        await self.start()

    def pid(self) -> int | None:
        return self._process.pid()

    def running(self) -> bool:
        return self._process.running()

    async def wait_exit(self) -> int:
        return await self._process.wait_exit()

    async def stop(self) -> None:
        await self._process.stop()

    def instance_of(self, backend: str) -> str:
        """The instance a backend (rt_N) serves now ("" for none: it changed since, or it is mesh's)."""
        slot = backend.removeprefix(BACKEND_PREFIX)
        return next((i for i, s in self._slots.items() if str(s) == slot), "")

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

    async def latency(self) -> list[LatencyCounts]:
        if not self._layout.latency:
            return []
        return parse_latency(await self._api.run("mesh latency"))
