"""What the benchmark's own server processes share: announcing the port, and stopping on a signal or orphaning."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

PARENT_POLL_S = 0.5
LOOPS = ("asyncio", "uvloop")
"""The event loops a benchmark proxy can run on: the standard library's, or uvloop (libuv) where installed."""


def uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def serve_loop() -> str:
    """The event loop `mesh serve` runs on by default here (Settings.event_loop, MESH_EVENT_LOOP)."""
    from mesh.config import Settings
    from mesh.serve import event_loop_factory

    return "asyncio" if event_loop_factory(Settings.from_env().event_loop) is None else "uvloop"


def run_on(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run(main) on the named event loop."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    elif loop != "asyncio":
        raise ValueError(f"unknown event loop {loop!r}: choose from {', '.join(LOOPS)}")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def write_port_file(path: Path, port: int, **more: int) -> None:
    """{"port": N, "pid": P, ...more}, written atomically so the parent never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"port": port, "pid": os.getpid(), **more}), encoding="utf-8")
    os.replace(tmp, path)


async def wait_for_stop() -> None:
    """Returns on SIGTERM/SIGINT, or once the parent is gone (so a killed benchmark leaves no server behind)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    async def watch_parent() -> None:
        while True:
            await asyncio.sleep(PARENT_POLL_S)
            if os.getppid() != parent:  # reparented: the benchmark is gone
                stop.set()
                return

    watcher = asyncio.create_task(watch_parent())
    try:
        await stop.wait()
    finally:
        watcher.cancel()
