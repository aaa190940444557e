"""The placement decision log: per model, its last MAX_EVENTS loads, evictions, load failures, unloads and loads
the thrash guard held back, each with where, when, which router and why: what `mesh explain` shows as a model's
history.

It lives in the store, so it survives a router's restart and every router on one etcd writes and reads the same
log, under `<prefix>.decisions/<model id>`: beside the records, not under them, so that no router's view watches
or mirrors it. Events are kept in memory and written in batches (`flush`, each maintenance round and at stop), one
compare-and-swap per model with events, so a load or an eviction never waits for the log; at most MAX_PENDING
wait between flushes (more are dropped, counted). Unregistering a model forgets its log.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

from mesh.kv.base import KV
from mesh.placement.records import now_ms

log = logging.getLogger(__name__)

MAX_EVENTS = 32
"""Events kept per model (the newest)."""
MAX_PENDING = 10_000
CAS_ATTEMPTS = 5

Event = dict[str, Any]


class DecisionLog:
    def __init__(self, kv: KV, prefix: str, router_id: str) -> None:
        self._kv = kv
        self._root = f"{prefix}.decisions/"
        self._router_id = router_id
        self._pending: dict[str, list[Event]] = {}
        self._pending_count = 0
        self.dropped = 0

    def key(self, model_id: str) -> str:
        return self._root + quote(model_id, safe="")

    def record(self, model_id: str, event: str, **details: Any) -> None:
        """Note an event (written at the next flush)."""
        if self._pending_count >= MAX_PENDING:
            self.dropped += 1
            return
        entry = {"ts_ms": now_ms(), "event": event, "router": self._router_id, **details}
        self._pending.setdefault(model_id, []).append(entry)
        self._pending_count += 1

    async def flush(self) -> None:
        """Append what is pending to each model's log in the store (keeping the newest MAX_EVENTS)."""
        pending, self._pending, self._pending_count = self._pending, {}, 0
        for model_id, events in pending.items():
            try:
                await self._append(model_id, events)
            except Exception as exc:  # noqa: BLE001 - the log must never fail placement; the next flush goes on
                log.warning("placement decisions for %s not written: %s", model_id, exc)

    async def _append(self, model_id: str, events: list[Event]) -> None:
        key = self.key(model_id)
        for _ in range(CAS_ATTEMPTS):
            current = await self._kv.get(key)
            stored = json.loads(current.value) if current is not None else []
            merged = sorted([*stored, *events], key=lambda e: e["ts_ms"])[-MAX_EVENTS:]
            revision = current.mod_revision if current is not None else 0
            if await self._kv.cas_put(key, json.dumps(merged, separators=(",", ":")).encode(), revision):
                return
        log.warning(
            "placement decisions for %s not written: the log kept changing under %d attempts", model_id, CAS_ATTEMPTS
        )

    async def history(self, model_id: str) -> list[Event]:
        """The model's events, oldest first: the store's, and this router's not flushed yet."""
        current = await self._kv.get(self.key(model_id))
        stored = json.loads(current.value) if current is not None else []
        return sorted([*stored, *self._pending.get(model_id, [])], key=lambda e: e["ts_ms"])[-MAX_EVENTS:]

    async def forget(self, model_id: str) -> None:
        self._pending_count -= len(self._pending.pop(model_id, []))
        await self._kv.delete(self.key(model_id))
