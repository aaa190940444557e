"""Background rounds: an action run every period until cancelled, a failed round logged and the next one tried."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from mesh.errors import MeshError


async def every(period: float, action: Callable[[], Awaitable[None]], what: str, log: logging.Logger) -> None:
    """Run action() every `period` seconds until cancelled. A MeshError (the store is down, say) is a warning and an
    unexpected error is logged with its traceback; either way the next round tries again, the loop never stops."""
    while True:
        await asyncio.sleep(period)
        try:
            await action()
        except MeshError as exc:
            log.warning("%s deferred: %s", what, exc.message)
        except Exception:
            log.exception("%s failed", what)


async def woken_or_after(event: asyncio.Event, timeout: float) -> None:
    """Return when the event is set, or after `timeout` seconds, whichever comes first; the event is left set.

    asyncio.timeout rather than wait_for: Python 3.11's wait_for loses a cancellation that arrives just as the
    event is set, and a loop around it then never stops.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
