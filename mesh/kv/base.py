"""The KV interface placement state lives behind, shaped after etcd v3 so the etcd backend is a thin mapping.

Semantics every backend keeps:
- one store-wide revision, incremented by each write (a transaction is one revision);
- every key carries create_revision, mod_revision and version (writes since creation);
- compare-and-swap transactions: all compares hold → success ops, else failure ops, atomically;
- leases: keys attached to a lease vanish when it expires or is revoked (each deletion a watch event);
- prefix watches that start from a given revision, so a watcher that reconnects misses nothing.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class CompareTarget(enum.Enum):
    MOD_REVISION = "mod_revision"
    VERSION = "version"
    VALUE = "value"


@dataclass(frozen=True, slots=True)
class Compare:
    """`key`'s target equals `expected`. A missing key has mod_revision 0 and version 0."""

    key: str
    target: CompareTarget
    expected: int | bytes

    @classmethod
    def mod_revision(cls, key: str, revision: int) -> Compare:
        """Holds when the key was last written at `revision` (0: the key does not exist)."""
        return cls(key, CompareTarget.MOD_REVISION, revision)

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, CompareTarget.VERSION, 0)


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    # For DELETE: the key with value b"" and mod_revision = the revision of the deletion (other fields 0, as etcd).
    kv: KeyValue


class Compacted(Exception):
    """A watch asked to start from a revision the store no longer holds history for."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted; oldest available is {compact_revision}")
        self.compact_revision = compact_revision


class LeaseNotFound(LookupError):
    """A put named a lease that does not exist (never granted, expired or revoked); nothing was written."""

    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease} not found")
        self.lease = lease


class KV(abc.ABC):
    """Async key-value store with revisions, CAS transactions, leases and prefix watches."""

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under prefix, sorted by key, and the store revision they were read at."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write unconditionally; returns the new store revision."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete a key; False when it did not exist."""

    @abc.abstractmethod
    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult: ...

    @abc.abstractmethod
    async def grant_lease(self, ttl_seconds: float) -> int:
        """A new lease id; keys put with it vanish ttl after the last keep-alive."""

    @abc.abstractmethod
    async def keep_alive(self, lease: int) -> bool:
        """Refresh a lease; False when it has already expired."""

    @abc.abstractmethod
    async def revoke_lease(self, lease: int) -> None: ...

    @abc.abstractmethod
    def watch_prefix(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Events for keys under prefix with revision >= start_revision (0: from now on), in order.

        Raises Compacted from the iterator (an etcd server says so in its reply) when start_revision is older
        than the history kept. The iterator has aclose(), which stops it.
        """

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def cas_put(self, key: str, value: bytes, expected_mod_revision: int, lease: int = 0) -> bool:
        """Put only if the key is still at expected_mod_revision (0: only if absent)."""
        result = await self.txn([Compare.mod_revision(key, expected_mod_revision)], [Put(key, value, lease)])
        return result.succeeded

    async def cas_delete(self, key: str, expected_mod_revision: int) -> bool:
        result = await self.txn([Compare.mod_revision(key, expected_mod_revision)], [Delete(key)])
        return result.succeeded
