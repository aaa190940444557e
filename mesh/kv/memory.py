"""The embedded KV store: etcd v3's semantics on one machine, its non-lease keys optionally persisted (mesh.kv.wal).

State is a dict of KeyValue plus a sorted key list (a prefix read is two bisects and a slice), a bounded
event history for watches that start in the past, one event-loop timer per lease, and one queue per watcher
fed at write time. No method awaits, so every write is atomic with respect to the event loop.

With a `path`, every write goes to the log before it changes anything, and start-up replays the log; leases
and their keys are not persisted. Watch history is not persisted either: after a restart, a watch from an
earlier revision raises Compacted.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sys
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mesh.kv.base import (
    KV,
    Compacted,
    Compare,
    CompareTarget,
    Delete,
    EventType,
    KeyValue,
    LeaseNotFound,
    Op,
    Put,
    TxnResult,
    WatchEvent,
)
from mesh.kv.wal import Change, WriteAheadLog

logger = logging.getLogger(__name__)

# When the log refuses a lease's deletions (disk full), how long until the timer tries again.
_EXPIRY_RETRY_SECONDS = 1.0


@dataclass(eq=False, slots=True)
class _Lease:
    id: int
    ttl: float
    deadline: float  # time.monotonic()
    keys: set[str] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class _Watcher:
    prefix: str
    min_revision: int
    # Unbounded so that a write never waits for a watcher; the price is that a watcher which stops reading
    # holds its backlog in memory until it reads or is closed. None marks the end of the stream.
    queue: asyncio.Queue[WatchEvent | None] = field(default_factory=asyncio.Queue)


class _WatchStream(AsyncIterator[WatchEvent]):
    """What watch_prefix returns. aclose(), or dropping it (`break` out of `async for`), unregisters it."""

    def __init__(self, watchers: set[_Watcher], watcher: _Watcher, error: Compacted | None = None) -> None:
        self._watcher = watcher
        self._error = error
        self._done = False
        # A finalizer rather than a reference from the store, so an abandoned stream is unregistered as soon
        # as it is dropped instead of collecting events forever.
        self._unregister = weakref.finalize(self, watchers.discard, watcher)

    async def __anext__(self) -> WatchEvent:
        if self._error is not None:
            error, self._error = self._error, None
            self._done = True
            raise error
        if self._done:
            raise StopAsyncIteration
        event = await self._watcher.queue.get()
        if event is None:
            self._done = True
            self._unregister()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        self._unregister()
        if not self._done:
            self._done = True
            self._watcher.queue.put_nowait(None)  # wakes a reader blocked in __anext__


class MemoryKV(KV):
    """The embedded store for one machine; its non-lease keys survive restarts when `path` is given.

    `history` bounds the events kept for watches that start in the past; `fsync` makes every logged write
    durable before it returns (a blocking fsync on the event loop, so off by default: a write is then in the
    OS's page cache, which survives the process but not the machine).
    """

    def __init__(self, path: Path | None = None, history: int = 10_000, *, fsync: bool = False) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0, got {history}")
        self._kvs: dict[str, KeyValue] = {}
        # The same keys and values sorted by code point, etcd's order (UTF-8 bytes sort the same way): a prefix
        # read bisects _keys and slices _sorted, never touching the dict (100x faster at 100k keys).
        self._keys: list[str] = []
        self._sorted: list[KeyValue] = []
        self._revision = 1  # etcd's empty store is at revision 1; its first write is revision 2
        self._history: deque[WatchEvent] = deque()
        self._history_limit = history
        self._compact_revision = 1  # the oldest revision a watch may start from
        self._leases: dict[int, _Lease] = {}
        self._next_lease_id = 1
        self._watchers: set[_Watcher] = set()
        self._closed = False
        self._log: WriteAheadLog | None = None
        if path is not None:
            log = WriteAheadLog(Path(path), fsync)
            try:
                self._kvs, self._revision = log.replay()
            except BaseException:
                log.close()
                raise
            self._log = log
            self._keys = sorted(self._kvs)
            self._sorted = [self._kvs[key] for key in self._keys]
            if self._revision > 1:
                self._compact_revision = self._revision + 1
            self._compact_log_if_due()

    # Reads

    async def get(self, key: str) -> KeyValue | None:
        self._check_open()
        return self._kvs.get(key)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        self._check_open()
        start = bisect.bisect_left(self._keys, prefix)
        end_key = _prefix_end(prefix)
        end = len(self._keys) if end_key is None else bisect.bisect_left(self._keys, end_key, lo=start)
        return self._sorted[start:end], self._revision

    # Writes

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._check_open()
        ops = [Put(key, value, lease)]
        _check_ops(ops)
        self._check_leases(ops)
        return self._apply(ops)

    async def delete(self, key: str) -> bool:
        self._check_open()
        if key not in self._kvs:
            return False  # as in etcd: no change, no new revision
        self._apply([Delete(key)])
        return True

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        self._check_open()
        _check_ops(success)  # etcd validates both branches before it evaluates anything
        _check_ops(failure)
        succeeded = all(self._holds(compare) for compare in compares)
        ops = success if succeeded else failure
        self._check_leases(ops)  # and only the taken branch's leases
        return TxnResult(succeeded, self._apply(ops))

    def _holds(self, compare: Compare) -> bool:
        kv = self._kvs.get(compare.key)
        if compare.target is CompareTarget.VALUE:
            if not isinstance(compare.expected, bytes):
                raise TypeError(f"a value compare expects bytes, got {type(compare.expected).__name__}")
            # As in etcd: a value compare on a missing key never holds.
            return kv is not None and kv.value == compare.expected
        if not isinstance(compare.expected, int):
            raise TypeError(f"a {compare.target.value} compare expects int, got {type(compare.expected).__name__}")
        if kv is None:
            return compare.expected == 0
        actual = kv.mod_revision if compare.target is CompareTarget.MOD_REVISION else kv.version
        return actual == compare.expected

    def _check_leases(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if isinstance(op, Put) and op.lease and self._live_lease(op.lease) is None:
                raise LeaseNotFound(op.lease)

    def _apply(self, ops: Sequence[Op]) -> int:
        """Apply validated ops as one revision (none if nothing changes); returns the store revision."""
        revision = self._revision + 1
        changes: list[Change] = []
        deleted: set[str] = set()
        for op in ops:
            before = self._kvs.get(op.key)
            if isinstance(op, Put):
                create, version = (revision, 1) if before is None else (before.create_revision, before.version + 1)
                changes.append((op.key, before, KeyValue(op.key, op.value, create, revision, version, op.lease)))
            elif before is not None and op.key not in deleted:
                deleted.add(op.key)
                changes.append((op.key, before, None))
        if not changes:
            return self._revision
        # Log first: when the log cannot be written, the write fails and nothing changes.
        if self._log is not None:
            self._log.append(revision, changes)
        self._revision = revision
        self._publish([self._commit(change, revision) for change in changes])
        self._compact_log_if_due()
        return revision

    def _commit(self, change: Change, revision: int) -> WatchEvent:
        key, before, after = change
        if before is not None and before.lease:
            self._leases[before.lease].keys.discard(key)
        index = bisect.bisect_left(self._keys, key)
        if after is None:
            del self._kvs[key], self._keys[index], self._sorted[index]
            # As in etcd, a deletion event carries only the key and the revision of the deletion.
            return WatchEvent(EventType.DELETE, KeyValue(key, b"", 0, revision, 0))
        if before is None:
            self._keys.insert(index, key)
            self._sorted.insert(index, after)
        else:
            self._sorted[index] = after
        self._kvs[key] = after
        if after.lease:
            self._leases[after.lease].keys.add(key)
        return WatchEvent(EventType.PUT, after)

    def _compact_log_if_due(self) -> None:
        if self._log is not None and self._log.compaction_due(len(self._kvs)):
            durable = [kv for kv in self._sorted if not kv.lease]
            self._log.compact(durable, self._revision)

    # Leases

    async def grant_lease(self, ttl_seconds: float) -> int:
        self._check_open()
        if ttl_seconds <= 0:
            raise ValueError(f"lease ttl must be > 0, got {ttl_seconds}")
        lease = _Lease(self._next_lease_id, ttl_seconds, time.monotonic() + ttl_seconds)
        self._next_lease_id += 1
        self._leases[lease.id] = lease
        self._arm(lease)
        return lease.id

    async def keep_alive(self, lease: int) -> bool:
        self._check_open()
        held = self._leases.get(lease)
        if held is None:
            return False
        if self._live_lease(lease) is None:
            self._expire(held)  # its timer has not run yet; do not let a late keep-alive revive it
            return False
        held.deadline = time.monotonic() + held.ttl  # the timer re-arms itself when it fires early
        return True

    async def revoke_lease(self, lease: int) -> None:
        """Delete the lease's keys now; revoking an unknown or expired lease does nothing."""
        self._check_open()
        held = self._leases.get(lease)
        if held is not None:
            self._expire(held)

    def _live_lease(self, lease: int) -> _Lease | None:
        held = self._leases.get(lease)
        return held if held is not None and time.monotonic() < held.deadline else None

    def _arm(self, lease: _Lease) -> None:
        delay = max(0.0, lease.deadline - time.monotonic())
        lease.timer = asyncio.get_running_loop().call_later(delay, self._on_lease_timer, lease)

    def _on_lease_timer(self, lease: _Lease) -> None:
        if self._leases.get(lease.id) is not lease:
            return
        if time.monotonic() < lease.deadline:
            self._arm(lease)  # kept alive since the timer was set
            return
        logger.info("lease %d expired after %.1fs; deleting its %d keys", lease.id, lease.ttl, len(lease.keys))
        try:
            self._expire(lease)
        except OSError:
            # The log refused the deletions, so nothing changed; keep the timer, or the keys would live forever.
            logger.exception("expiring lease %d failed; retrying in %.0fs", lease.id, _EXPIRY_RETRY_SECONDS)
            lease.timer = asyncio.get_running_loop().call_later(_EXPIRY_RETRY_SECONDS, self._on_lease_timer, lease)

    def _expire(self, lease: _Lease) -> None:
        # One revision for all the lease's keys, deleted in key order, as etcd's lessor does.
        self._apply([Delete(key) for key in sorted(lease.keys)])
        del self._leases[lease.id]
        if lease.timer is not None:
            lease.timer.cancel()

    # Watches

    def watch_prefix(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        self._check_open()
        if start_revision < 0:
            raise ValueError(f"start_revision must be >= 0, got {start_revision}")
        watcher = _Watcher(prefix, start_revision or self._revision + 1)
        if watcher.min_revision < self._compact_revision:
            # Raised from the iterator, where an etcd backend learns it from the server.
            return _WatchStream(self._watchers, watcher, Compacted(self._compact_revision))
        backlog = []
        for event in reversed(self._history):
            if event.kv.mod_revision < watcher.min_revision:
                break
            if event.kv.key.startswith(prefix):
                backlog.append(event)
        for event in reversed(backlog):
            watcher.queue.put_nowait(event)
        # Replayed and registered in one step, so no write can fall between history and live events.
        self._watchers.add(watcher)
        return _WatchStream(self._watchers, watcher)

    def _publish(self, events: list[WatchEvent]) -> None:
        self._history.extend(events)
        while len(self._history) > self._history_limit:
            # Drop whole revisions, so a watch never starts halfway through a transaction.
            dropped = self._history[0].kv.mod_revision
            while self._history and self._history[0].kv.mod_revision == dropped:
                self._history.popleft()
            self._compact_revision = dropped + 1
        for watcher in self._watchers:
            for event in events:
                if event.kv.mod_revision >= watcher.min_revision and event.kv.key.startswith(watcher.prefix):
                    watcher.queue.put_nowait(event)

    # Life cycle

    async def close(self) -> None:
        """End every watch, stop lease timers and close the log; leased keys are simply forgotten."""
        if self._closed:
            return
        self._closed = True
        for lease in self._leases.values():
            if lease.timer is not None:
                lease.timer.cancel()
        self._leases.clear()
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        self._watchers.clear()
        if self._log is not None:
            self._log.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the KV store is closed")


def _check_ops(ops: Sequence[Op]) -> None:
    """Refuse what etcd refuses: an empty key, a non-bytes value, a key put twice or both put and deleted."""
    deletes = {op.key for op in ops if isinstance(op, Delete)}
    puts: set[str] = set()
    for op in ops:
        if not isinstance(op, Put | Delete):
            raise TypeError(f"a transaction op must be Put or Delete, got {type(op).__name__}")
        if not op.key:
            raise ValueError("empty key")
        if isinstance(op, Put):
            if not isinstance(op.value, bytes):
                raise TypeError(f"value for {op.key!r} must be bytes, got {type(op.value).__name__}")
            if op.key in puts or op.key in deletes:
                raise ValueError(f"duplicate key {op.key!r} in one transaction")
            puts.add(op.key)


def _prefix_end(prefix: str) -> str | None:
    """The smallest key above every key that starts with prefix (None: no bound), as etcd's range_end."""
    stripped = prefix.rstrip(chr(sys.maxunicode))
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)
