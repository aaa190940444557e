"""The test session's hang watchdog (tests/harness/hang.py): past its limit it names the test and the await that
never finished, then interrupts; a test that ends in time is left alone."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from harness.hang import HangWatchdog


async def waits_forever(event: asyncio.Event) -> None:
    await event.wait()


async def test_a_test_past_the_limit_is_reported_with_its_pending_await_then_interrupted(tmp_path: Path) -> None:
    interrupted = threading.Event()
    watchdog = HangWatchdog(limit_s=0.2, interrupt=interrupted.set)
    report = tmp_path / "report"
    with report.open("w") as err:
        watchdog.start(err)
        stuck = asyncio.Event()
        task = asyncio.create_task(waits_forever(stuck), name="stuck-task")
        watchdog.entering("tests/x.py::test_stuck")
        try:
            assert await asyncio.to_thread(interrupted.wait, 10.0)
        finally:
            watchdog.stop()
            stuck.set()
            await task
    text = report.read_text()
    assert "hang: tests/x.py::test_stuck still running after 0s" in text
    assert "--- task stuck-task" in text and "in waits_forever" in text
    assert "Current thread" in text or "Thread 0x" in text  # every thread's stack too


async def test_a_test_that_ends_in_time_is_not_reported(tmp_path: Path) -> None:
    interrupted = threading.Event()
    watchdog = HangWatchdog(limit_s=0.2, interrupt=interrupted.set)
    report = tmp_path / "report"
    with report.open("w") as err:
        watchdog.start(err)
        watchdog.entering("tests/x.py::test_quick")
        watchdog.left()
        assert not await asyncio.to_thread(interrupted.wait, 0.5)
        watchdog.stop()
    assert report.read_text() == ""
