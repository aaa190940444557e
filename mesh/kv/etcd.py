"""The etcd backend: base.KV over etcd v3's own gRPC API (grpc.aio, stubs generated from protos/etcd-rpc.proto).

Every KV call is one etcd RPC. Calls wait for a connection (wait_for_ready) up to `timeout`, so a call made
while etcd restarts is sent once it is back; a call that breaks in flight fails with grpc's error and is not
retried here, since a write may have been applied (the callers' compare-and-swap loops decide).

Each watch is a task that keeps one Watch stream open and feeds a queue. When the stream breaks it opens
another (with backoff) from the revision after the last event it received, so a watch survives an etcd restart
or a lost connection without losing or repeating an event. Events received but not yet read stay queued, and
etcd never splits one revision across two responses, so resuming after the last received revision is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from mesh.errors import Unavailable
from mesh.gen import etcd_rpc_pb2 as pb
from mesh.gen import etcd_rpc_pb2_grpc as pb_grpc
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
from mesh.tls import ClientTLS

logger = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    # Find a restarted etcd within about 2 s (grpc's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Detect a dead peer under an idle watch stream; etcd refuses pings more often than every 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    # A prefix read returns the whole prefix in one response.
    ("grpc.max_receive_message_length", -1),
]
# etcd down, restarting or unreachable: the caller may try again, and mesh answers UNAVAILABLE / 503.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_COMPARE_TARGETS = {
    CompareTarget.MOD_REVISION: (pb.Compare.MOD, "mod_revision"),
    CompareTarget.VERSION: (pb.Compare.VERSION, "version"),
    CompareTarget.VALUE: (pb.Compare.VALUE, "value"),
}
_EVENT_TYPES = {pb.Event.PUT: EventType.PUT, pb.Event.DELETE: EventType.DELETE}
# Errors that another try cannot fix; a watch stops with them instead of reconnecting.
_FATAL_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
_WATCH_BACKOFF_MIN = 0.05
_WATCH_BACKOFF_MAX = 2.0
TLS_ROTATION_GRACE_S = 30.0
"""How long calls on a channel made with rotated-out certificates get to finish before it closes."""


class EtcdKV(KV):
    """A KV on an etcd v3 cluster, given its client endpoints as "host:port" (tried in order on connect).

    Several endpoints must be IP addresses (grpc's static address list); for host names, give one name that
    resolves to every member. `timeout` bounds each call, including the wait for a connection.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 10.0, tls: ClientTLS | None = None) -> None:
        self._target = _target(endpoints)
        self._tls = tls
        self._tls_generation = tls.generation() if tls is not None else ()
        self._rpc: _Rpc | None = _Rpc(self._target, tls)
        self._timeout = timeout
        # The newest store revision any response showed: where a watch "from now" starts, with no extra call.
        self._revision = 0
        self._reading: asyncio.Task[int] | None = None
        self._watchers: set[_Watcher] = set()

    # Reads

    async def get(self, key: str) -> KeyValue | None:
        response = await self._call(self._open().kv.Range, pb.RangeRequest(key=_encode(key)))
        return _key_value(response.kvs[0]) if response.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        key, range_end = _prefix_range(prefix)
        response = await self._call(self._open().kv.Range, pb.RangeRequest(key=key, range_end=range_end))
        return [_key_value(kv) for kv in response.kvs], response.header.revision

    # Writes

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        request = pb.PutRequest(key=_encode(key), value=value, lease=lease)
        return (await self._call(self._open().kv.Put, request, lease=lease)).header.revision

    async def delete(self, key: str) -> bool:
        response = await self._call(self._open().kv.DeleteRange, pb.DeleteRangeRequest(key=_encode(key)))
        return response.deleted > 0

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        request = pb.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure],
        )
        # etcd does not say which lease it missed; name the first one the transaction uses.
        lease = next((op.lease for op in (*success, *failure) if isinstance(op, Put) and op.lease), 0)
        response = await self._call(self._open().kv.Txn, request, lease=lease)
        return TxnResult(response.succeeded, response.header.revision)

    # Leases

    async def grant_lease(self, ttl_seconds: float) -> int:
        """A new lease; etcd counts whole seconds (rounded up here) and lengthens a TTL below its minimum (2 s)."""
        if ttl_seconds <= 0:
            raise ValueError(f"lease ttl must be > 0, got {ttl_seconds}")
        response = await self._call(self._open().lease.LeaseGrant, pb.LeaseGrantRequest(TTL=math.ceil(ttl_seconds)))
        if response.error:
            raise RuntimeError(f"etcd refused a lease: {response.error}")
        return response.ID

    async def keep_alive(self, lease: int) -> bool:
        # A stream per call: a shared stream would need reconnecting and matching replies to callers, and the
        # cost is one HTTP/2 stream per keep-alive (a few per lease TTL), not a round trip more.
        call = self._open().lease.LeaseKeepAlive(
            iter([pb.LeaseKeepAliveRequest(ID=lease)]), timeout=self._timeout, wait_for_ready=True
        )
        try:
            response = await call.read()
        finally:
            call.cancel()
        if response is grpc.aio.EOF:
            raise RuntimeError("etcd ended a lease keep-alive stream without a reply")
        self._saw(response.header.revision)
        return response.TTL > 0  # etcd answers TTL 0 for a lease that expired, was revoked or never existed

    async def revoke_lease(self, lease: int) -> None:
        """Delete the lease's keys now; revoking an unknown or expired lease does nothing."""
        with contextlib.suppress(LeaseNotFound):
            await self._call(self._open().lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=lease), lease=lease)

    # Watches

    def watch_prefix(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """As base.KV; 0 starts after the newest revision this client has seen, so it misses none of its writes."""
        self._open()
        if start_revision < 0:
            raise ValueError(f"start_revision must be >= 0, got {start_revision}")
        from_now = start_revision == 0
        reading = None
        if from_now and self._revision:
            start_revision = self._revision + 1
        elif from_now:
            # A client that has seen no revision yet reads one; its calls wait for that read (see _call), so
            # whatever the caller writes after this call comes after the watch's start.
            if self._reading is None or self._reading.done():
                self._reading = asyncio.create_task(self._read_revision(), name="etcd-read-revision")
                self._reading.add_done_callback(lambda task: task.cancelled() or task.exception())
            reading = self._reading
        watcher = _Watcher(self, prefix, start_revision, from_now, reading)
        self._watchers.add(watcher)
        return _WatchStream(watcher)

    # Life cycle

    async def close(self) -> None:
        """End every watch and close the channel; leases are left to expire."""
        rpc, self._rpc = self._rpc, None  # dropped, so nothing that outlives this client keeps grpc's resources
        if rpc is None:
            return
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None  # its CancelledError's frames refer back to this client
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.stop()
        if watchers:
            await asyncio.wait([w.task for w in watchers])
        await rpc.channel.close()

    # Plumbing

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable, request: Message, *, lease: int = 0) -> Any:
        """One unary RPC with etcd's errors mapped: unknown lease → LeaseNotFound, invalid request → ValueError."""
        if self._reading is not None and not self._reading.done():
            await asyncio.wait([self._reading])
        try:
            response = await method(request, timeout=self._timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND and lease:
                raise LeaseNotFound(lease) from exc
            if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                # e.g. "etcdserver: duplicate key given in txn request", "etcdserver: key is not provided"
                raise ValueError(exc.details()) from exc
            if exc.code() in _RETRYABLE:
                raise Unavailable(f"the placement store (etcd) did not answer: {exc.details()}") from exc
            raise
        self._saw(response.header.revision)
        return response

    async def _read_revision(self) -> int:
        """The store's revision now (one Range; only its header is used)."""
        range_ = self._open().kv.Range
        response = await range_(pb.RangeRequest(key=b"\0"), timeout=self._timeout, wait_for_ready=True)
        self._saw(response.header.revision)
        return response.header.revision

    def _saw(self, revision: int) -> None:
        self._revision = max(self._revision, revision)

    def _open(self) -> _Rpc:
        if self._rpc is None:
            raise RuntimeError("the KV store is closed")
        if self._tls is not None and (generation := self._tls.generation()) != self._tls_generation:
            # Rotated certificate files: new calls go on a channel made with them; calls (and watch streams) on
            # the old one get a while to finish, then its close makes watches resume on the new one.
            self._tls_generation = generation
            old, self._rpc = self._rpc, _Rpc(self._target, self._tls)
            asyncio.get_running_loop().call_later(
                TLS_ROTATION_GRACE_S, lambda: asyncio.ensure_future(old.channel.close())
            )
            logger.info("etcd TLS files changed; calls go on a new channel")
        return self._rpc


class _Rpc:
    """A channel and etcd's services on it."""

    def __init__(self, target: str, tls: ClientTLS | None) -> None:
        if tls is None:
            self.channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.secure_channel(target, tls.grpc_credentials(), options=_CHANNEL_OPTIONS)
        self.kv = pb_grpc.KVStub(self.channel)
        self.watch = pb_grpc.WatchStub(self.channel)
        self.lease = pb_grpc.LeaseStub(self.channel)


class _Resume(Exception):
    """Open the watch stream again at once, from the revision now set."""


class _Watcher:
    """One prefix watch: a task that keeps a Watch stream open, resumes it after a break, and fills a queue."""

    def __init__(
        self, kv: EtcdKV, prefix: str, start_revision: int, from_now: bool, reading: asyncio.Task[int] | None
    ) -> None:
        self._kv = kv
        self._prefix = prefix
        self._key, self._range_end = _prefix_range(prefix)
        self._next_revision = start_revision  # 0: from the revision `reading` reads, + 1
        self._reading = reading
        # Started after the newest revision the client had seen, not at one the caller named.
        self._from_now = from_now
        self._failures = 0  # attempts that failed since the last stream that opened
        # Unbounded, as in MemoryKV; an exception or None (closed) ends the stream.
        self.queue: asyncio.Queue[WatchEvent | Exception | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(), name=f"etcd-watch {prefix!r}")

    @property
    def failures(self) -> int:
        return self._failures

    def stop(self) -> None:
        self._kv._watchers.discard(self)
        with contextlib.suppress(RuntimeError):  # an event loop already closed has no task left to cancel
            self.task.cancel()
            self.queue.put_nowait(None)

    async def _run(self) -> None:
        # Stopped by stop(): end without keeping the CancelledError, whose frames would tie this watcher and the
        # client's channel in a reference cycle until the next garbage collection.
        with contextlib.suppress(asyncio.CancelledError):
            await self._keep_watching()

    async def _keep_watching(self) -> None:
        while True:
            try:
                if not self._next_revision:
                    reading, self._reading = self._reading, None
                    self._next_revision = await (reading or self._kv._read_revision()) + 1
                await self._follow()
                reason = "etcd ended it"
            except _Resume:
                continue
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _FATAL_CODES:
                    self.queue.put_nowait(exc)
                    return
                reason = exc.code().name
            except TimeoutError:
                reason = "no reply in time"
            except Exception as exc:  # Compacted, canceled by etcd, or a bug: the reader sees it, never a hang
                self.queue.put_nowait(exc)
                return
            if self._failures == 0:
                logger.warning(
                    "etcd watch on %r broke (%s); resuming at revision %d", self._prefix, reason, self._next_revision
                )
            self._failures += 1
            self._from_now = False
            delay = min(_WATCH_BACKOFF_MAX, _WATCH_BACKOFF_MIN * 2**self._failures)
            await asyncio.sleep(random.uniform(delay / 2, delay))  # jittered: many routers reconnect at once

    async def _follow(self) -> None:
        """Run one Watch stream until it ends or breaks; Compacted, or RuntimeError when etcd cancels it."""
        create = pb.WatchCreateRequest(key=self._key, range_end=self._range_end, start_revision=self._next_revision)
        call = self._kv._open().watch.Watch(wait_for_ready=True)
        try:
            # Bounded, so an attempt that hangs (a half-open connection) gives way to the next one.
            async with asyncio.timeout(self._kv._timeout):
                await call.write(pb.WatchRequest(create_request=create))
                response = await call.read()
            while response is not grpc.aio.EOF:
                self._receive(response)
                response = await call.read()
        finally:
            call.cancel()

    def _receive(self, response: pb.WatchResponse) -> None:
        if response.compact_revision:
            if not self._from_now:
                raise Compacted(response.compact_revision)
            # Compaction passed the client's newest revision before this watch began, so what it dropped
            # predates the watch: start from the oldest revision kept.
            self._next_revision, self._from_now = response.compact_revision, False
            raise _Resume
        if response.canceled:
            raise RuntimeError(f"etcd canceled the watch on {self._prefix!r}: {response.cancel_reason}")
        if response.created and self._failures:
            logger.info("etcd watch on %r resumed at revision %d", self._prefix, self._next_revision)
            self._failures = 0
        for event in response.events:
            self.queue.put_nowait(WatchEvent(_EVENT_TYPES[event.type], _key_value(event.kv)))
            self._next_revision = event.kv.mod_revision + 1
            self._from_now = False
        self._kv._saw(response.header.revision)


class _WatchStream(AsyncIterator[WatchEvent]):
    """What watch_prefix returns. aclose(), or dropping it (`break` out of `async for`), stops the watch."""

    def __init__(self, watcher: _Watcher) -> None:
        self._watcher = watcher
        self._done = False
        self._stop = weakref.finalize(self, watcher.stop)
        self._stop.atexit = False

    async def __anext__(self) -> WatchEvent:
        if self._done:
            raise StopAsyncIteration
        item = await self._watcher.queue.get()
        if isinstance(item, WatchEvent):
            return item
        self._done = True
        self._stop()
        if item is None:
            raise StopAsyncIteration
        raise item

    async def aclose(self) -> None:
        self._done = True
        self._stop()
        await asyncio.wait([self._watcher.task])

    @property
    def failed_attempts(self) -> int:
        """Attempts to (re)open the stream that failed since one last opened: above 0 while etcd is unreachable."""
        return self._watcher.failures


def _target(endpoints: Sequence[str]) -> str:
    """A grpc target for the endpoints: one as given (DNS), several as a static IPv4 or IPv6 address list."""
    endpoints = [e.strip() for e in endpoints if e.strip()]
    if not endpoints:
        raise ValueError("no etcd endpoint given")
    if len(endpoints) == 1:
        return endpoints[0]
    hosts = [e.rpartition(":")[0].strip("[]") for e in endpoints]
    try:
        versions = {ipaddress.ip_address(host).version for host in hosts}
    except ValueError:
        versions = set()
    if len(versions) != 1:
        raise ValueError(
            f"several etcd endpoints must all be IPv4 or all IPv6 addresses, got {','.join(endpoints)}; "
            "for host names, give one name that resolves to every member"
        )
    return f"ipv{versions.pop()}:" + ",".join(endpoints)


def _encode(key: str) -> bytes:
    return key.encode()


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """etcd's [key, range_end) for every key under prefix ("\\0", "\\0" for all keys)."""
    key = prefix.encode()
    for i in range(len(key) - 1, -1, -1):
        if key[i] < 0xFF:
            return key, key[:i] + bytes([key[i] + 1])
    return key or b"\0", b"\0"


def _key_value(kv: pb.KeyValue) -> KeyValue:
    return KeyValue(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _compare(compare: Compare) -> pb.Compare:
    target, field = _COMPARE_TARGETS[compare.target]
    return pb.Compare(result=pb.Compare.EQUAL, target=target, key=_encode(compare.key), **{field: compare.expected})


def _request_op(op: Op) -> pb.RequestOp:
    if isinstance(op, Put):
        return pb.RequestOp(request_put=pb.PutRequest(key=_encode(op.key), value=op.value, lease=op.lease))
    if isinstance(op, Delete):
        return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=_encode(op.key)))
    raise TypeError(f"a transaction op must be Put or Delete, got {type(op).__name__}")
