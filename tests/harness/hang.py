"""A watchdog for the test session: a test (setup, call and teardown together) that runs past a limit has every
thread's stack and every pending asyncio task's stack written to stderr, and the session is interrupted.

A hang in an event loop shows nothing useful in a thread dump (the main thread waits in epoll); the tasks'
coroutine stacks say which await never finished. The interrupt ends the session with pytest's summary instead of
letting CI run into its own limit with no word of where it stopped.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

LIMIT_S = float(os.environ.get("MESH_TEST_HANG_S", "900"))


class HangWatchdog:
    def __init__(self, limit_s: float = LIMIT_S, interrupt: Callable[[], None] | None = None) -> None:
        self._limit_s = limit_s
        self._interrupt = interrupt or (lambda: os.kill(os.getpid(), signal.SIGINT))
        self._current: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._err: TextIO = sys.stderr
        self._thread = threading.Thread(target=self._watch, name="hang-watchdog", daemon=True)

    def start(self, err: TextIO) -> None:
        """`err`: where the report goes; not sys.stderr while a test runs (pytest captures that, and an interrupted
        session never shows a test's captured output)."""
        self._err = err
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def entering(self, nodeid: str) -> None:
        with self._lock:
            self._current = (nodeid, time.monotonic())

    def left(self) -> None:
        with self._lock:
            self._current = None

    def _watch(self) -> None:
        while not self._stopped.wait(min(5.0, self._limit_s / 4)):
            with self._lock:
                current = self._current
            if current is None or time.monotonic() - current[1] < self._limit_s:
                continue
            self._report(current[0])
            self._interrupt()
            return

    def _report(self, nodeid: str) -> None:
        err = self._err
        print(f"\n=== hang: {nodeid} still running after {self._limit_s:.0f}s; stacks follow ===", file=err)
        faulthandler.dump_traceback(file=err, all_threads=True)
        # Read from another thread: a snapshot for diagnosis, not for correctness.
        for task in list(asyncio.tasks._all_tasks):  # type: ignore[attr-defined]
            if task.done():
                continue
            print(f"--- task {task.get_name()} ({task.get_coro()!r})", file=err)
            for frame in task.get_stack(limit=20):
                print(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}", file=err)
        err.flush()
