"""The router's local copy of placement state, kept current by a prefix watch.

The data path reads only this view, so routing an already-loaded model costs dict lookups and no store round
trip. Every record carries the mod revision it was read at; a write's own result and the watch event for it
may both arrive, and whichever is older is ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import TTLCache

from mesh.kv.base import KV, Compacted, EventType, KeyValue
from mesh.placement.records import (
    DemandRecord,
    InstanceRecord,
    Keys,
    Kind,
    ModelRecord,
    PlacementRecord,
    VModelRecord,
)

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Versioned(Generic[R]):
    record: R
    revision: int


DECODERS: dict[Kind, Callable[[bytes], object]] = {
    Kind.MODEL: ModelRecord.from_bytes,
    Kind.PLACEMENT: PlacementRecord.from_bytes,
    Kind.VMODEL: VModelRecord.from_bytes,
    Kind.INSTANCE: InstanceRecord.from_bytes,
    Kind.DEMAND: DemandRecord.from_bytes,
}


class LocalView:
    """Models, placements, vmodels, instances and routers' demand by id, each with its mod revision."""

    def __init__(self, kv: KV, keys: Keys) -> None:
        self._kv = kv
        self.keys = keys
        self.tables: dict[Kind, dict[str, Versioned]] = {kind: {} for kind in Kind}
        # The same dicts by name: read on every request, and attribute access beats hashing an Enum member.
        # The tables are only ever changed in place, so these stay the same objects.
        self.models: dict[str, Versioned[ModelRecord]] = self.tables[Kind.MODEL]
        self.placements: dict[str, Versioned[PlacementRecord]] = self.tables[Kind.PLACEMENT]
        self.vmodels: dict[str, Versioned[VModelRecord]] = self.tables[Kind.VMODEL]
        self.instances: dict[str, Versioned[InstanceRecord]] = self.tables[Kind.INSTANCE]
        self.demands: dict[str, Versioned[DemandRecord]] = self.tables[Kind.DEMAND]
        # Revision of recent deletions per key, so a stale put arriving after a delete is not resurrected.
        # Bounded: a late event is late by a watch round trip, not by minutes.
        self._deleted_at: TTLCache[tuple[Kind, str], int] = TTLCache(maxsize=100_000, ttl=300)
        self._revision = 0
        self._watch_task: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[Kind, str], None]] = []

    async def start(self) -> None:
        """Load everything under the prefix, then follow changes from the next revision on."""
        kvs, revision = await self._kv.get_prefix(self.keys.root)
        for kv in kvs:
            self.apply_put(kv)
        self._revision = revision
        self._watch_task = asyncio.create_task(self._follow(), name="placement-view-watch")

    async def stop(self) -> None:
        if self._watch_task:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except asyncio.CancelledError:
                pass

    async def _follow(self) -> None:
        while True:
            try:
                async for event in self._kv.watch_prefix(self.keys.root, self._revision + 1):
                    if event.type is EventType.PUT:
                        self.apply_put(event.kv)
                    else:
                        self.apply_delete(event.kv.key, event.kv.mod_revision)
                    self._revision = max(self._revision, event.kv.mod_revision)
                return
            except Compacted:
                log.warning("placement watch fell behind compaction; reloading the whole view")
                await self._reload()

    async def refresh(self, kind: Kind, record_id: str) -> bool:
        """Read one record from the store now, ahead of the watch; True when it exists."""
        kv = await self._kv.get(self.keys.key(kind, record_id))
        if kv is not None:
            self.apply_put(kv)
        return kv is not None

    async def _reload(self) -> None:
        """Replace the view with the store's contents, dropping records deleted while the watch was behind."""
        kvs, revision = await self._kv.get_prefix(self.keys.root)
        present = {self.keys.parse(kv.key) for kv in kvs}
        for kind, table in self.tables.items():
            for record_id in [r for r in table if (kind, r) not in present]:
                del table[record_id]
                self._changed(kind, record_id)
        for kv in kvs:
            self.apply_put(kv)
        self._revision = revision

    def apply_put(self, kv: KeyValue, record: object = None) -> None:
        """Take a put into the view; `record` is kv.value already decoded (a write of this router's own)."""
        parsed = self.keys.parse(kv.key)
        if parsed is None:
            return
        kind, record_id = parsed
        table = self.tables[kind]
        current = table.get(record_id)
        if current and current.revision >= kv.mod_revision:
            return
        if self._deleted_at.get(parsed, 0) >= kv.mod_revision:
            return
        try:
            table[record_id] = Versioned(DECODERS[kind](kv.value) if record is None else record, kv.mod_revision)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring undecodable record %s: %s", kv.key, exc)
            return
        self._changed(kind, record_id)

    def apply_delete(self, key: str, revision: int) -> None:
        parsed = self.keys.parse(key)
        if parsed is None:
            return
        kind, record_id = parsed
        current = self.tables[kind].get(record_id)
        if current and current.revision > revision:
            return
        self._deleted_at[parsed] = max(self._deleted_at.get(parsed, 0), revision)
        if self.tables[kind].pop(record_id, None) is not None:
            self._changed(kind, record_id)

    def _changed(self, kind: Kind, record_id: str) -> None:
        for callback in self.on_change:
            callback(kind, record_id)
