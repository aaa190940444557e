"""What the benchmark's own server processes share: announcing the port, and stopping on a signal or orphaning."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

PARENT_POLL_S = 0.5


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
