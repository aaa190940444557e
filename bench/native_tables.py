"""The engine's tables at fleet size (scenario 7): an HAProxy engine alone, given R routes at once (every model
on one instance, found by name and by header; a vmodel for one in ten) and a usage entry per model and copy, then
one route changed at a time. The engine holds routes for loaded models only: registered models that are not loaded
cost it nothing.

Reports the time to publish them all, the engine's resident memory before and after, and the time one route
change takes end to end (mesh's diff of its whole table plus the engine's runtime-API round trip).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from pathlib import Path

from mesh.engine.haproxy import HAProxyEngine, find_haproxy
from mesh.engine.haproxy_api import RuntimeAPI
from mesh.engine.haproxy_config import COPIES_TABLE, USAGE_TABLE, EngineFiles, HAProxyLayout, Listener
from mesh.engine.haproxy_process import ChildProcess
from mesh.engine.routes import RouteSet, RouteUpdate


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def route_set(count: int) -> RouteSet:
    """count models on rt-a, a vmodel for one in ten."""
    copies = {f"model-{i}": ("rt-a",) for i in range(count)}
    vmodels = {f"vmodel-{i}": f"model-{i}" for i in range(0, count, 10)}
    return RouteSet(copies, copies, vmodels)


async def _measure(directory: Path, routes: int, updates: int) -> dict[str, float]:
    binary = find_haproxy()
    if binary is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    layout = HAProxyLayout(EngineFiles(directory), Listener(address=f"127.0.0.1:{port}"), None, "127.0.0.1:1", None)
    engine = HAProxyEngine(layout, ChildProcess(binary, layout.files))
    api = RuntimeAPI(layout.files.admin_socket)
    await engine.start()
    try:
        await engine.set_instances({"rt-a": "127.0.0.1:2", "rt-b": "127.0.0.1:3"})
        pid = engine.pid()
        assert pid is not None
        before = rss_mb(pid)
        started = time.perf_counter()
        await engine.set_routes(route_set(routes))
        publish_s = time.perf_counter() - started
        # Every loaded model has used the engine: an entry per model in the usage table, per copy in the copies one.
        await api.run_all(
            command
            for i in range(routes)
            for command in (
                f"set table {USAGE_TABLE} key model-{i} data.http_req_cnt 1",
                f"set table {COPIES_TABLE} key model-{i}@rt_0 data.http_req_cnt 1",
            )
        )
        timings = []
        for n in range(updates):
            # What a placement change makes: one model's routes recomputed and sent (control.py).
            copies = ("rt-a", "rt-b") if n % 2 == 0 else ("rt-a",)
            started = time.perf_counter()
            await engine.update_routes(RouteUpdate({"model-1": copies}, {"model-1": copies}))
            timings.append((time.perf_counter() - started) * 1000)
        return {
            "routes": routes,
            "publish_s": publish_s,
            "rss_before_mb": before,
            "rss_mb": rss_mb(pid),
            "update_ms": statistics.median(timings),
        }
    finally:
        await engine.stop()


def measure_tables(directory: Path, routes: int, updates: int) -> dict[str, float]:
    return asyncio.run(_measure(directory, routes, updates))
