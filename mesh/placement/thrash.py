"""The thrash guard: when the cache churns, stop evicting models in use to make room for models that are not.

Churn shows in loads that undo evictions: a model loaded again less than `young_s` after its copy was evicted was
still in use when it went, so the working set does not fit. (An evicted copy nobody asks for again is the cache
working: one-shot models passing through free room are no churn.) After `trigger` such loads within `window_s`
the guard turns on: a load may then evict only copies idle for `young_s` or more, unless the model it loads is in
use itself (used within `young_s`: a hot model whose copy went in the churn takes its place back). A miss for a
cold model that could only be placed by evicting copies in use is held back: refused at once with a retry-after
hint (RESOURCE_EXHAUSTED, mode "refuse"), or kept waiting until a copy becomes idle enough, for at most
`queue_s` and at most `queue_limit` loads at a time (mode "queue"). Hits keep flowing; cold models wait or are
refused instead of pushing the hot ones out one after the other. The guard goes off once `window_s` passes with
neither a reload of an evicted model nor a held-back load.

Each router watches its own loads and evictions (the guard is this router's); its state is a gauge and a log event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from mesh.config import Settings
from mesh.errors import Overloaded

log = logging.getLogger(__name__)

THRASH_GUARD_MODES = ("off", "refuse", "queue")


@dataclass(frozen=True)
class ThrashSettings:
    mode: str = "off"
    young_s: float = 10.0
    trigger: int = 3
    window_s: float = 30.0
    queue_s: float = 5.0
    queue_limit: int = 64

    def __post_init__(self) -> None:
        if self.mode not in THRASH_GUARD_MODES:
            raise ValueError(
                f"unknown thrash guard mode {self.mode!r}; expected one of {', '.join(THRASH_GUARD_MODES)}"
            )


def thrash_settings(settings: Settings) -> ThrashSettings:
    return ThrashSettings(
        settings.thrash_guard,
        settings.thrash_young_seconds,
        settings.thrash_trigger,
        settings.thrash_window_seconds,
        settings.thrash_queue_seconds,
        settings.thrash_queue_limit,
    )


class ThrashGuard:
    def __init__(
        self,
        settings: ThrashSettings,
        on_change: Callable[[bool], None] = lambda on: None,
        count_held_back: Callable[[str], None] = lambda outcome: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._on_change = on_change
        self.count_held_back = count_held_back
        """Called with each held-back load's outcome: "refused", "queued", or "timed_out" (queued, then refused)."""
        self._clock = clock
        self._young: deque[float] = deque()
        self._evicted_at: OrderedDict[str, float] = OrderedDict()
        self._last_pressure = float("-inf")
        self._on = False
        self.queued = 0
        """Loads waiting for a copy to become evictable (mode "queue")."""

    @property
    def enabled(self) -> bool:
        return self.settings.mode != "off"

    def evicted(self, model_id: str) -> None:
        """A copy of the model was evicted (remembered for young_s, to see whether it is loaded again)."""
        if not self.enabled:
            return
        now = self._clock()
        self._evicted_at.pop(model_id, None)
        self._evicted_at[model_id] = now
        while self._evicted_at and next(iter(self._evicted_at.values())) < now - self.settings.young_s:
            self._evicted_at.popitem(last=False)

    def loading(self, model_id: str) -> None:
        """A copy of the model is being loaded: churn, if one was evicted within young_s."""
        evicted = self._evicted_at.pop(model_id, None)
        now = self._clock()
        if evicted is None or now - evicted >= self.settings.young_s:
            return
        self._young.append(now)
        self._last_pressure = now
        self._update(now)

    def held_back(self) -> None:
        """A load was held back by the guard: the pressure goes on, and so does the guard."""
        self._last_pressure = self._clock()

    def protect_after_ms(self) -> int:
        """While on: copies used after this instant (ms since the epoch) are not evicted. 0 while off."""
        now = self._clock()
        self._update(now)
        return int((now - self.settings.young_s) * 1000) if self._on else 0

    @property
    def on(self) -> bool:
        self._update(self._clock())
        return self._on

    def _update(self, now: float) -> None:
        horizon = now - self.settings.window_s
        while self._young and self._young[0] < horizon:
            self._young.popleft()
        if not self._on and len(self._young) >= self.settings.trigger:
            self._switch(
                True, f"{len(self._young)} models were loaded again within {self.settings.young_s:g}s of their eviction"
            )
        elif self._on and self._last_pressure < horizon:
            self._switch(False, f"no churn and no load held back for {self.settings.window_s:g}s")

    def _switch(self, on: bool, why: str) -> None:
        self._on = on
        if on:
            self._young.clear()  # counted again from here, for the next time it goes off and on
            held = "wait for one to become idle" if self.settings.mode == "queue" else "are refused, to retry later"
            effect = f"copies used within {self.settings.young_s:g}s are not evicted; loads that need them {held}"
        else:
            effect = "loads evict as the eviction policy says"
        log.log(
            logging.WARNING if on else logging.INFO,
            "thrash guard %s (%s): %s",
            "on" if on else "off",
            why,
            effect,
            extra={"event": "thrash_guard_on" if on else "thrash_guard_off", "reason": why},
        )
        self._on_change(on)


class HeldBack:
    """One load's dealings with the guard: refused at once (mode "refuse", or the queue is full), or waiting (mode
    "queue") until the first copy the guard protects may go, again as long as the guard holds it back, for at
    most queue_s in all; then refused."""

    def __init__(self, guard: ThrashGuard, clock: Callable[[], float] = time.monotonic) -> None:
        self._guard = guard
        self._clock = clock
        self._deadline: float | None = None

    async def wait(self, held: Overloaded) -> None:
        """Return when the load should decide again; raise `held` when it is refused."""
        guard, settings = self._guard, self._guard.settings
        now = self._clock()
        if self._deadline is None:
            if settings.mode != "queue" or guard.queued >= settings.queue_limit:
                guard.count_held_back("refused")
                raise held
            guard.count_held_back("queued")
            self._deadline = now + settings.queue_s
        remaining = self._deadline - now
        if remaining <= 0:
            guard.count_held_back("timed_out")
            raise held
        guard.queued += 1
        try:
            # The moment the first protected copy has been idle long enough: a computed instant, not a poll.
            await asyncio.sleep(min(held.retry_after_s, remaining))
        finally:
            guard.queued -= 1
