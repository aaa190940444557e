"""Recency: when each model was last routed to, noted in memory on the data path and written to the store in
batches.

A request notes the time in this router's memory only (no store round trip). flush() writes what was noted since
the last flush, one compare-and-swap per model, and never moves a record's last use backwards; last_used_ms()
is the later of the stored (cluster-wide) time and this router's own.
"""

from __future__ import annotations

from mesh.placement.records import Kind, PlacementRecord, now_ms
from mesh.placement.store import UNCHANGED, RecordStore
from mesh.placement.view import LocalView


class Recency:
    def __init__(self, view: LocalView, store: RecordStore) -> None:
        self._view = view
        self._store = store
        self._last_used: dict[str, int] = {}
        self._used_since_flush: set[str] = set()

    def used(self, model_id: str) -> None:
        """A request was routed to the model now. No I/O: on the data path."""
        self._last_used[model_id] = now_ms()
        self._used_since_flush.add(model_id)

    async def flush(self) -> None:
        """Write the in-memory recency to the store, one CAS per model used since the last flush."""
        pending, self._used_since_flush = self._used_since_flush, set()
        for model_id in pending:
            used_ms = self._last_used.get(model_id, 0)

            def change(p: PlacementRecord | None, used_ms: int = used_ms) -> object:
                return p.used_at(used_ms) if p and p.last_used_ms < used_ms else UNCHANGED

            await self._store.update(Kind.PLACEMENT, model_id, change)

    def last_used_ms(self, model_id: str) -> int:
        """The later of the stored last use and this router's own (0: never used)."""
        placement = self._view.placements.get(model_id)
        stored = placement.record.last_used_ms if placement else 0
        return max(stored, self._last_used.get(model_id, 0))
