"""Copies follow load: when a model gets another copy, and when its extra copies are unloaded.

A model gets one more copy when
- even its least busy copy has more than scale_up_in_flight requests in flight (checked by the data path, which
  calls scale_up only past that threshold);
- its request rate per copy passes scale_up_rpm, the rate being the cluster's: every router publishes the rate it
  measured over its last review beside its demand (demand.py), and the rates are summed;
- it has one copy and has been in use for second_copy_after_seconds, with no pause longer than
  second_copy_max_gap_seconds (ModelMesh's second-copy rule): losing one runtime is then not a cold load for a
  model people use regularly;
- it has fewer copies than its min_copies (these may evict to make room; the others take free space only).
At most one copy per model is being added at a time. The copy itself is placed and loaded by the loader.

All but the oldest copy (or the oldest min_copies) of a model idle for idle_copy_seconds (cluster-wide last use)
are unloaded, copies on instances that are not draining kept first.

An instance told to stop (its record says draining) hands off: each model it holds that was used within
working_set_seconds gets a copy on another instance, most recently used first, retried while the instance is
there, and these may evict (the runtime waits for them before it leaves: adapters/common/handoff.py). One
router does it, the one with the lowest id (DemandBoard.leads): several placing at once over-fill instances.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

from mesh.config import Settings
from mesh.placement.copies import CopyTable
from mesh.placement.records import now_ms

log = logging.getLogger(__name__)

HANDOFF_RETRY_S = 0.25
"""A model whose hand-off copy could not start (every load slot taken) tries again this soon."""


class UseStreaks:
    """How long each model has been in use without a long pause: the second-copy rule's memory. No I/O."""

    def __init__(self, max_gap_ms: float) -> None:
        self._max_gap_ms = max_gap_ms
        # model id → (first use of its streak, latest use seen), in ms since the epoch
        self._streaks: dict[str, tuple[int, int]] = {}

    def seen_in_use(self, model_id: str, now: int, last_used_ms: int = 0) -> int:
        """Note the model in use now; how long (ms) it has been in use. last_used_ms: its use before this router
        first saw it (the store's cluster-wide last use), which starts the streak then if recent enough."""
        first, latest = self._streaks.get(model_id, (last_used_ms, last_used_ms))
        if not latest or now - latest > self._max_gap_ms:
            first = now
        self._streaks[model_id] = (first, now)
        return now - first

    def forget_paused(self, now: int) -> None:
        """Drop streaks that have ended (no use for longer than the longest pause): memory stays bounded."""
        self._streaks = {m: s for m, s in self._streaks.items() if now - s[1] <= self._max_gap_ms}


class CopyScaler:
    def __init__(
        self,
        settings: Settings,
        copies: CopyTable,
        request_counts: Callable[[], Counter[str]],
        rates: Callable[[dict[str, float]], dict[str, float]],
        leads: Callable[[], bool],
        last_used_ms: Callable[[str], int],
        min_copies: Callable[[], Mapping[str, int]],
        loading: Callable[[str], bool],
        add_copy: Callable[[str, bool], Awaitable[None]],
        unload_copy: Callable[[str, str], Awaitable[None]],
    ) -> None:
        """request_counts: requests routed per model since it was last called; rates: given this router's requests
        per minute per model, the cluster's (demand.py); leads: whether this router is the one that hands off
        draining instances; last_used_ms: a model's cluster-wide last use; min_copies:
        the models that keep copies loaded, with how many; loading: whether its first load is under way;
        add_copy(model id, may_evict): load one more copy of a model (or its first); unload_copy: unload one copy
        (model id, instance id)."""
        self._settings = settings
        self._copies = copies
        self._request_counts = request_counts
        self._rates = rates
        self._leads = leads
        self._last_used_ms = last_used_ms
        self._min_copies = min_copies
        self._loading = loading
        self._add_copy = add_copy
        self._unload_copy = unload_copy
        self._streaks = UseStreaks(settings.second_copy_max_gap_seconds * 1000)
        self._rate_window_start = time.monotonic()
        self._scaling: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handing_off: dict[str, asyncio.Task[None]] = {}

    async def stop(self) -> None:
        """Cancel copies being added and hand-offs, and wait for them to finish."""
        tasks = [*self._tasks, *self._handing_off.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def hand_off(self, instance_id: str) -> None:
        """Start moving the recently used models of a draining instance to others (once per instance), if this
        router leads: routers placing copies at once, each unaware of the other's loads in flight, over-fill
        instances and evict what is in use."""
        if instance_id in self._handing_off or not self._leads():
            return
        task = asyncio.get_running_loop().create_task(self._hand_off(instance_id), name=f"hand-off-{instance_id}")
        self._handing_off[instance_id] = task
        task.add_done_callback(lambda _t: self._handing_off.pop(instance_id, None))

    async def _hand_off(self, instance_id: str) -> None:
        horizon = now_ms() - self._settings.working_set_seconds * 1000
        recent = [m for m in self._copies.held_by(instance_id) if self._last_used_ms(m) >= horizon]
        recent.sort(key=self._last_used_ms, reverse=True)
        log.info("instance %s is draining: loading its %d recently used model(s) elsewhere", instance_id, len(recent))
        await asyncio.gather(*(self._move_off(model_id, instance_id) for model_id in recent))

    async def _move_off(self, model_id: str, instance_id: str) -> None:
        """Add a copy of the model elsewhere until one is loaded, while the draining instance is there."""
        while self._copies.draining(instance_id):
            if any(not self._copies.draining(i) for i, _ in self._copies.loaded_copies(model_id)):
                return
            await self._add_copy(model_id, True)
            await asyncio.sleep(HANDOFF_RETRY_S)

    async def settled(self) -> None:
        """Wait until the copies being added now are loaded, or failed."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def review_rates(self) -> None:
        """Add a copy to models whose cluster-wide request rate per copy passed the threshold, and a second copy to
        single-copy models in use long enough."""
        now = time.monotonic()
        minutes = max(now - self._rate_window_start, 1e-3) / 60
        counts, self._rate_window_start = self._request_counts(), now
        rates = self._rates({model_id: count / minutes for model_id, count in counts.items()})
        wall_ms = now_ms()
        second_copy_after_ms = self._settings.second_copy_after_seconds * 1000
        for model_id, rate in rates.items():
            copies = len(self._copies.loaded_copies(model_id))
            in_use_ms = self._streaks.seen_in_use(model_id, wall_ms, self._last_used_ms(model_id))
            if rate / (copies or 1) > self._settings.scale_up_rpm:
                self.scale_up(model_id)
            elif copies == 1 and second_copy_after_ms and in_use_ms >= second_copy_after_ms:
                self.scale_up(model_id, reason="in regular use")
        self._streaks.forget_paused(wall_ms)

    def keep_min_copies(self) -> None:
        """Start loading a copy of every model that has fewer live copies than its min_copies."""
        for model_id, wanted in self._min_copies().items():
            placement = self._copies.placement(model_id)
            live = len(self._copies.live_copies(placement)) if placement else 0
            if live < wanted:
                self.scale_up(model_id, may_evict=True, reason=f"{live} of its {wanted} minimum copies live")

    def scale_up(self, model_id: str, may_evict: bool = False, reason: str = "") -> None:
        """Start adding one copy of the model in the background, unless one is being added or loaded already.
        may_evict: the copy may evict others to make room (a minimum copy); else it takes free space only."""
        if model_id in self._scaling or self._loading(model_id):
            return
        if reason:
            log.debug("adding a copy of model %s: %s", model_id, reason)
        self._scaling.add(model_id)
        adding = self._add_copy(model_id, may_evict)
        task = asyncio.get_running_loop().create_task(adding, name=f"scale-up-{model_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._scaling.discard(model_id))

    async def retire_idle_copies(self) -> None:
        """Unload all but the oldest copy (the oldest min_copies) of every model idle for idle_copy_seconds."""
        horizon = now_ms() - self._settings.idle_copy_seconds * 1000
        keep_at_least = self._min_copies()
        for model_id in self._copies.placed_models():
            loaded = self._copies.loaded_copies(model_id)
            keep = max(keep_at_least.get(model_id, 1), 1)
            # A copy loaded within the window counts as use: another router may be serving the model and not
            # have flushed its recency yet, and retiring the copy it just added would make the two flap.
            newest_copy_ms = max((c.since_ms for _, c in loaded), default=0)
            if len(loaded) <= keep or max(self._last_used_ms(model_id), newest_copy_ms) > horizon:
                continue
            # Every router picks the same survivors, so two routers retiring at once agree; a draining instance's
            # copy goes first (its instance is about to).
            by_age = sorted(loaded, key=lambda ic: (self._copies.draining(ic[0]), ic[1].since_ms, ic[0]))
            survivors = {i for i, _c in by_age[:keep]}
            for instance_id, _copy in loaded:
                if instance_id not in survivors and not self._copies.in_flight(model_id, instance_id):
                    log.info("unloading idle extra copy of model %s from %s", model_id, instance_id)
                    await self._unload_copy(model_id, instance_id)
