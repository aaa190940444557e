"""Runtime instances: registering them (status, lease, record) and the SPI clients that reach them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from mesh.errors import Unavailable
from mesh.gen import model_runtime_pb2 as rt
from mesh.kv.base import KV, LeaseNotFound
from mesh.placement.records import InstanceRecord, Kind, now_ms
from mesh.placement.store import RecordStore
from mesh.placement.view import LocalView
from mesh.runtime import RuntimeClient

log = logging.getLogger(__name__)


def record_from_status(instance_id: str, endpoint: str, status: rt.RuntimeStatusResponse) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        endpoint=endpoint,
        capacity_bytes=status.capacityInBytes,
        loading_slots=max(1, status.maxLoadingConcurrency),
        default_model_size=status.defaultModelSizeInBytes or 1_000_000,
        load_timeout_ms=status.modelLoadingTimeoutMs,
        methods={name: tuple(info.idInjectionPath) for name, info in status.methodInfos.items()},
        started_ms=now_ms(),
    )


class InstanceRegistry:
    """The instances this router registered, kept alive by a lease, and a client per known instance."""

    def __init__(self, kv: KV, view: LocalView, store: RecordStore, lease_seconds: float, max_message_bytes: int):
        self._kv = kv
        self._view = view
        self._store = store
        self._lease_seconds = lease_seconds
        self._max_message_bytes = max_message_bytes
        self._clients: dict[str, RuntimeClient] = {}
        self._owned: dict[str, InstanceRecord] = {}
        self._lease = 0
        self._keepalive: asyncio.Task[None] | None = None

    def client(self, instance_id: str) -> RuntimeClient:
        """The client for an instance in the view (raises Unavailable when it is gone)."""
        client = self._clients.get(instance_id)
        if client is None:
            known = self._view.instances.get(instance_id)
            if known is None:
                raise Unavailable(f"runtime instance '{instance_id}' is gone")
            client = RuntimeClient(instance_id, known.record.endpoint, self._max_message_bytes)
            self._clients[instance_id] = client
        return client

    async def add(
        self, instance_id: str, endpoint: str, model_types: tuple[str, ...] = (), startup_timeout: float = 60
    ) -> InstanceRecord:
        """Wait for the runtime to report READY (it purges its models then) and publish its record."""
        client = RuntimeClient(instance_id, endpoint, self._max_message_bytes)
        deadline = asyncio.get_running_loop().time() + startup_timeout
        while True:
            try:
                status = await client.status(timeout=max(0.1, deadline - asyncio.get_running_loop().time()))
            except grpc.aio.AioRpcError as exc:
                await client.close()
                raise Unavailable(f"runtime '{instance_id}' at {endpoint} did not answer: {exc.details()}") from exc
            if status.status == rt.RuntimeStatusResponse.READY:
                break
            if status.status == rt.RuntimeStatusResponse.FAILING or asyncio.get_running_loop().time() > deadline:
                await client.close()
                raise Unavailable(f"runtime '{instance_id}' at {endpoint} is not ready")
            await asyncio.sleep(0.2)
        record = record_from_status(instance_id, endpoint, status)
        if model_types:
            record = InstanceRecord(**{**record.__dict__, "model_types": model_types})
        old = self._clients.pop(instance_id, None)
        if old:
            await old.close()
        self._clients[instance_id] = client
        await self._publish(record)
        self._owned[instance_id] = record
        log.info("runtime instance %s ready at %s (capacity %d bytes)", instance_id, endpoint, record.capacity_bytes)
        return record

    async def remove(self, instance_id: str) -> None:
        self._owned.pop(instance_id, None)
        await self._store.update(Kind.INSTANCE, instance_id, lambda _: None)
        client = self._clients.pop(instance_id, None)
        if client:
            await client.close()

    async def _publish(self, record: InstanceRecord) -> None:
        if not self._lease:
            self._lease = await self._kv.grant_lease(self._lease_seconds)
            self._keepalive = asyncio.create_task(self._keep_alive(), name="instance-lease-keepalive")
        try:
            await self._store.update(Kind.INSTANCE, record.instance_id, lambda _: record, lease=self._lease)
        except LeaseNotFound:
            # Expired between keep-alives (a stalled loop); the keep-alive task re-publishes the others.
            self._lease = await self._kv.grant_lease(self._lease_seconds)
            await self._store.update(Kind.INSTANCE, record.instance_id, lambda _: record, lease=self._lease)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            if await self._kv.keep_alive(self._lease):
                continue
            log.warning("instance lease expired; registering %d instances again", len(self._owned))
            self._lease = await self._kv.grant_lease(self._lease_seconds)
            for record in self._owned.values():
                await self._store.update(Kind.INSTANCE, record.instance_id, lambda _, r=record: r, lease=self._lease)

    async def close(self) -> None:
        if self._keepalive:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if self._lease:
            with contextlib.suppress(Exception):
                await self._kv.revoke_lease(self._lease)
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
