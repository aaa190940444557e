"""Runtime instances: probing a runtime, publishing its record under a lease, and the clients that reach them.

A record is published either by the router that started the runtime (`mesh serve`, the embedded default) or by
the runtime process itself (`--kv`), which is how runtimes join a mesh whose routers run elsewhere. Either way
the record is bound to a lease: when its publisher dies, the record expires and the instance leaves routing.
Each publication carries a new `started_ms`, the instance's incarnation; copies recorded under an older
incarnation are not trusted (the runtime restarted empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from mesh.errors import Unavailable
from mesh.gen import model_runtime_pb2 as rt
from mesh.kv.base import KV, KeyValue, LeaseNotFound
from mesh.placement.records import InstanceRecord, Keys, Kind, Record, now_ms
from mesh.placement.view import LocalView
from mesh.runtime import RuntimeClient
from mesh.tls import ClientTLS

log = logging.getLogger(__name__)


def record_from_status(
    instance_id: str,
    endpoint: str,
    status: rt.RuntimeStatusResponse,
    model_types: tuple[str, ...] = (),
    tls: bool = False,
) -> InstanceRecord:
    """The record of a runtime that answered `status`; model_types, when given, overrides what it reports."""
    return InstanceRecord(
        instance_id=instance_id,
        endpoint=endpoint,
        capacity_bytes=status.capacityInBytes,
        model_types=model_types or tuple(status.meshModelTypes),
        data_endpoint=status.meshDataEndpoint,
        tls=tls,
        loading_slots=max(1, status.maxLoadingConcurrency),
        default_model_size=status.defaultModelSizeInBytes or 1_000_000,
        load_timeout_ms=status.modelLoadingTimeoutMs,
        methods={name: tuple(info.idInjectionPath) for name, info in status.methodInfos.items()},
        started_ms=now_ms(),
        reads_model_header=status.meshReadsModelIdHeader,
        labels=tuple(sorted(set(status.meshLabels))),
        device_capacity_bytes=sum(device.capacityInBytes for device in status.meshDevices),
    )


async def probe_runtime(
    instance_id: str,
    endpoint: str,
    model_types: tuple[str, ...] = (),
    startup_timeout: float = 60.0,
    tls: ClientTLS | None = None,
) -> InstanceRecord:
    """Wait for a runtime to report READY (it purges its models then) and describe it as a record.
    tls: dial it over TLS with these files (the record then says so)."""
    client = RuntimeClient(instance_id, endpoint, tls=tls)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + startup_timeout
    try:
        while True:
            try:
                status = await client.status(timeout=max(0.1, deadline - loop.time()))
            except grpc.aio.AioRpcError as exc:
                raise Unavailable(f"runtime '{instance_id}' at {endpoint} did not answer: {exc.details()}") from exc
            if status.status == rt.RuntimeStatusResponse.READY:
                return record_from_status(instance_id, endpoint, status, model_types, tls=tls is not None)
            if status.status == rt.RuntimeStatusResponse.FAILING or loop.time() > deadline:
                raise Unavailable(f"runtime '{instance_id}' at {endpoint} is not ready")
            await asyncio.sleep(0.2)
    finally:
        await client.close()


class LeasePublisher:
    """Keeps records in the store under one lease (the publisher's life): instance records, and a router's demand
    record. Publish, keep alive, publish everything again after the lease expired."""

    def __init__(self, kv: KV, keys: Keys, lease_seconds: float) -> None:
        self._kv = kv
        self._keys = keys
        self._lease_seconds = lease_seconds
        self._records: dict[tuple[Kind, str], Record] = {}
        self._lease = 0
        self._keepalive: asyncio.Task[None] | None = None

    async def publish(self, record: InstanceRecord) -> KeyValue:
        """Write an instance record under the lease; returns what was written, for a view to apply at once."""
        return await self.put(Kind.INSTANCE, record.instance_id, record)

    async def put(self, kind: Kind, record_id: str, record: Record) -> KeyValue:
        """Write any record under the lease; returns what was written."""
        self._records[(kind, record_id)] = record
        if not self._lease:
            self._lease = await self._kv.grant_lease(self._lease_seconds)
            self._keepalive = asyncio.create_task(self._keep_alive(), name="lease-keepalive")
        try:
            return await self._put(kind, record_id, record)
        except LeaseNotFound:
            await self._renew()
            return await self._put(kind, record_id, record)

    async def withdraw(self, instance_id: str) -> None:
        if self._records.pop((Kind.INSTANCE, instance_id), None) is not None:
            await self._kv.delete(self._keys.key(Kind.INSTANCE, instance_id))

    async def _put(self, kind: Kind, record_id: str, record: Record) -> KeyValue:
        key, value = self._keys.key(kind, record_id), record.to_bytes()
        revision = await self._kv.put(key, value, self._lease)
        return KeyValue(key, value, create_revision=0, mod_revision=revision, version=0, lease=self._lease)

    async def _renew(self) -> None:
        """The lease expired (a stalled loop, a store outage): publish everything again under a new one."""
        log.warning("lease expired; publishing %d record(s) again", len(self._records))
        self._lease = await self._kv.grant_lease(self._lease_seconds)
        for (kind, record_id), record in self._records.items():
            await self._put(kind, record_id, record)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                if not await self._kv.keep_alive(self._lease):
                    await self._renew()
            except Exception as exc:  # noqa: BLE001 - store outages are retried next period; the task must live
                log.warning("keeping the instance lease alive failed: %s", exc)

    async def close(self, close_store: bool = False) -> None:
        """Stop keeping the lease alive and revoke it, so the records vanish at once."""
        if self._keepalive:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if self._lease:
            with contextlib.suppress(Exception):
                await self._kv.revoke_lease(self._lease)
        self._lease = 0
        if close_store:
            await self._kv.close()


class RuntimeClients:
    """One SPI client per instance in the view, replaced when the instance comes back at another endpoint."""

    def __init__(self, view: LocalView, max_message_bytes: int, tls: ClientTLS | None = None) -> None:
        """tls: the files to dial instances whose records say TLS with (None: the system's roots, no client
        certificate); a change to the files makes new clients."""
        self._view = view
        self._max_message_bytes = max_message_bytes
        self.tls = tls
        self._clients: dict[str, RuntimeClient] = {}

    def get(self, instance_id: str) -> RuntimeClient:
        """The client for an instance in the view (raises Unavailable when it is gone)."""
        known = self._view.instances.get(instance_id)
        if known is None:
            raise Unavailable(f"runtime instance '{instance_id}' is gone")
        client = self._clients.get(instance_id)
        record = known.record
        tls = (self.tls or ClientTLS()) if record.tls else None
        wanted = (record.endpoint, record.data_endpoint, tls.generation() if tls is not None else ())
        if client is None or (client.endpoint, client.data_endpoint, client.tls_generation) != wanted:
            if client is not None:
                asyncio.get_running_loop().create_task(client.close())
            client = RuntimeClient(instance_id, record.endpoint, self._max_message_bytes, record.data_endpoint, tls)
            self._clients[instance_id] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
