"""Usage: when each model was last routed to (cluster-wide) and how often (this router's count, for GDSF).

A request notes the time in this router's memory only (no store round trip). flush() writes what was noted since
the last flush, one compare-and-swap per model, and never moves a record's last use backwards; last_used_ms()
is the later of the stored (cluster-wide) time and this router's own.

It counts requests per model since the scaler last took the counts (request rates: scaling.py), and for the
gdsf eviction policy it also counts uses per model and keeps the GDSF clock, which rises to the
priority of each copy evicted. Those counts are this router's: models other routers serve count as unused here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from mesh.placement import policy
from mesh.placement.records import Kind, PlacementRecord, now_ms
from mesh.placement.store import UNCHANGED, RecordStore
from mesh.placement.view import LocalView


class Usage:
    def __init__(self, view: LocalView, store: RecordStore, eviction_policy: str) -> None:
        self._view = view
        self._store = store
        self._eviction = eviction_policy
        self._count_uses = eviction_policy in policy.CLOCKED_POLICIES
        self._last_used: dict[str, int] = {}
        self._used_since_flush: set[str] = set()
        self._requests: Counter[str] = Counter()
        self._uses: Counter[str] = Counter()
        self._clock_at_use: dict[str, float] = {}
        self._gdsf_clock = 0.0

    def used(self, model_id: str) -> None:
        """A request was routed to the model now. No I/O: on the data path (so touched() is not called here)."""
        self._last_used[model_id] = now_ms()
        self._used_since_flush.add(model_id)
        self._requests[model_id] += 1
        if self._count_uses:
            self._uses[model_id] += 1
            self._clock_at_use[model_id] = self._gdsf_clock

    def served_natively(self, model_id: str, requests: int, last_used_ms: int) -> None:
        """A native data-plane engine served `requests` for the model, the last at `last_used_ms`: they count as if
        they had been routed here."""
        if last_used_ms > self._last_used.get(model_id, 0):
            self._last_used[model_id] = last_used_ms
        self._used_since_flush.add(model_id)
        self._requests[model_id] += requests
        if self._count_uses:
            self._uses[model_id] += requests
            self._clock_at_use[model_id] = self._gdsf_clock

    def touched(self, model_id: str) -> None:
        """Note the model as used now without counting a request (a copy just loaded for one about to come)."""
        self._last_used[model_id] = now_ms()
        self._used_since_flush.add(model_id)

    def take_request_counts(self) -> Counter[str]:
        """Requests routed per model since the last call (this router's)."""
        counts, self._requests = self._requests, Counter()
        return counts

    def evicted(self, victims: Iterable[policy.ResidentCopy]) -> None:
        """Copies were evicted: the GDSF clock rises to the highest priority among them."""
        if self._count_uses:
            self._gdsf_clock = policy.gdsf_clock(self._gdsf_clock, victims, self._eviction)

    def resident_copy(
        self, model_id: str, size_bytes: int, evictable: bool, device_bytes: int = 0, load_ms: int = 0
    ) -> policy.ResidentCopy:
        """A copy of the model as eviction weighs it (load_ms: how long its last load took)."""
        return policy.ResidentCopy(
            model_id,
            size_bytes,
            self.last_used_ms(model_id),
            evictable,
            self._uses.get(model_id, 0),
            self._clock_at_use.get(model_id, 0.0),
            device_bytes,
            load_ms,
        )

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
