"""Background rounds (mesh/periodic.py): a failed round is logged and the next one runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from mesh.errors import Unavailable
from mesh.periodic import every


async def test_rounds_go_on_after_a_store_error_and_after_an_unexpected_one(caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []
    done = asyncio.Event()

    async def action() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise Unavailable("the store did not answer")
        if len(rounds) == 2:
            raise RuntimeError("a bug")
        done.set()

    log = logging.getLogger("test.periodic")
    task = asyncio.create_task(every(0.001, action, "the round", log))
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(rounds) >= 3
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "test.periodic"]
    assert ("WARNING", "the round deferred: the store did not answer") in messages
    assert ("ERROR", "the round failed") in messages
