"""Compare-and-swap updates of placement records, reflected in the local view as soon as they commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from mesh.errors import Unavailable
from mesh.kv.base import KV, Compare, Delete, KeyValue, Put
from mesh.placement.records import Kind
from mesh.placement.view import DECODERS, LocalView

UNCHANGED: Final = object()
"""Returned by a change function to leave the record as it is."""

MAX_ATTEMPTS = 20


class RecordStore:
    """Every shared-state write goes through update(): read, change, CAS on the mod revision, retry."""

    def __init__(self, kv: KV, view: LocalView) -> None:
        self._kv = kv
        self._view = view

    async def update(self, kind: Kind, record_id: str, change: Callable[[Any], Any], lease: int = 0) -> Any:
        """Apply change(current or None) and write the result (None deletes); returns the record written.

        The change function may run more than once when another writer got there first, so it must be pure.
        """
        key = self._view.keys.key(kind, record_id)
        known = self._view.tables[kind].get(record_id)
        record, revision = (known.record, known.revision) if known else (None, 0)
        for _ in range(MAX_ATTEMPTS):
            new = change(record)
            if new is UNCHANGED:
                return record
            if new is None and revision == 0:
                return None
            op = Delete(key) if new is None else Put(key, new.to_bytes(), lease)
            result = await self._kv.txn([Compare.mod_revision(key, revision)], [op])
            if result.succeeded:
                if new is None:
                    self._view.apply_delete(key, result.revision)
                else:
                    written = KeyValue(key, op.value, 0, result.revision, 0, lease)  # type: ignore[union-attr]
                    self._view.apply_put(written, new)
                return new
            # Lost the race: start again from what the store holds now, and show the view what it lost to (newer
            # than anything it has; the watch brings the same later). A caller deciding from the view, such as a
            # load claim that lost, must see the winner at once rather than decide again from the old state.
            fresh = await self._kv.get(key)
            if fresh is None:
                record, revision = None, 0
                self._view.apply_delete(key, result.revision)
            else:
                record, revision = DECODERS[kind](fresh.value), fresh.mod_revision
                self._view.apply_put(fresh, record)
        raise Unavailable(f"too much contention updating {kind.value}/{record_id}; try again")
