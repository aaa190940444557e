"""Copies follow load: when a model gets another copy, and when its extra copies are unloaded.

A model gets one more copy when even its least busy copy has more than scale_up_in_flight requests in flight
(checked by the data path, which calls scale_up only past that threshold), or when its request rate per copy,
as seen by this router over the last maintenance period, passes scale_up_rpm. At most one extra copy per model
is being added at a time, and none while the model's first load is under way. The copy itself is placed and
loaded by the loader (Loader.add_copy: free space only, never evicting).

All but the oldest copy of a model idle for idle_copy_seconds (cluster-wide last use) are unloaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from mesh.config import Settings
from mesh.placement.copies import CopyTable
from mesh.placement.records import now_ms

log = logging.getLogger(__name__)


class CopyScaler:
    def __init__(
        self,
        settings: Settings,
        copies: CopyTable,
        request_counts: Callable[[], Counter[str]],
        last_used_ms: Callable[[str], int],
        loading: Callable[[str], bool],
        add_copy: Callable[[str], Awaitable[None]],
        unload_copy: Callable[[str, str], Awaitable[None]],
    ) -> None:
        """request_counts: requests routed per model since it was last called; last_used_ms: a model's cluster-wide
        last use; loading: whether its first load is under way; add_copy and
        unload_copy: load one more copy of a model, unload one copy (model id, instance id)."""
        self._settings = settings
        self._copies = copies
        self._request_counts = request_counts
        self._last_used_ms = last_used_ms
        self._loading = loading
        self._add_copy = add_copy
        self._unload_copy = unload_copy
        self._rate_window_start = time.monotonic()
        self._scaling: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        """Cancel copies being added and wait for them to finish."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def review_rates(self) -> None:
        """Add a copy to models whose request rate per copy, seen by this router, passed the threshold."""
        now = time.monotonic()
        minutes = max(now - self._rate_window_start, 1e-3) / 60
        counts, self._rate_window_start = self._request_counts(), now
        for model_id, count in counts.items():
            copies = len(self._copies.loaded_copies(model_id)) or 1
            if count / minutes / copies > self._settings.scale_up_rpm:
                self.scale_up(model_id)

    def scale_up(self, model_id: str) -> None:
        """Start adding one copy of the model in the background, unless one is being added or loaded already."""
        if model_id in self._scaling or self._loading(model_id):
            return
        self._scaling.add(model_id)
        task = asyncio.get_running_loop().create_task(self._add_copy(model_id), name=f"scale-up-{model_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._scaling.discard(model_id))

    async def retire_idle_copies(self) -> None:
        """Unload all but the oldest copy of every model idle for idle_copy_seconds (cluster-wide last use)."""
        horizon = now_ms() - self._settings.idle_copy_seconds * 1000
        for model_id in self._copies.placed_models():
            loaded = self._copies.loaded_copies(model_id)
            # A copy loaded within the window counts as use: another router may be serving the model and not
            # have flushed its recency yet, and retiring the copy it just added would make the two flap.
            newest_copy_ms = max((c.since_ms for _, c in loaded), default=0)
            if len(loaded) < 2 or max(self._last_used_ms(model_id), newest_copy_ms) > horizon:
                continue
            # Every router picks the same survivor, so two routers retiring at once agree.
            survivor = min(loaded, key=lambda ic: (ic[1].since_ms, ic[0]))[0]
            for instance_id, _copy in loaded:
                if instance_id != survivor and not self._copies.in_flight(model_id, instance_id):
                    log.info("unloading idle extra copy of model %s from %s", model_id, instance_id)
                    await self._unload_copy(model_id, instance_id)
