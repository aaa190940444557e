"""A runtime process's lifecycle: bind one grpc.aio server, announce it, optionally publish it, stop on a signal.

Shared by the built-in runtime and the adapters, so each of them only says which services it serves and what
its runtimeStatus reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from adapters.common.handoff import hand_off
from adapters.common.process_settings import ProcessSettings
from mesh.gen import model_runtime_pb2 as rt
from mesh.kv import open_kv
from mesh.kv.base import KV
from mesh.metrics import start_metrics_server
from mesh.placement.instances import LeasePublisher, record_from_status
from mesh.placement.records import InstanceRecord, Keys
from mesh.tls import client_tls, server_tls

log = logging.getLogger(__name__)

PARENT_POLL_S = 1.0
QUIET_S = 0.5
"""After leaving routing, a runtime serves on until no call has started for this long (routers and their engines
follow the store within milliseconds; a call that meets a stopping server is not always retried)..."""
QUIET_MAX_S = 5.0
"""...or for this long at most."""


class CallClock(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """When the last call started: how a runtime that left routing knows the routers have stopped sending."""

    def __init__(self) -> None:
        self.last_call = time.monotonic()

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.last_call = time.monotonic()
        return await continuation(handler_call_details)

    async def quiet(self) -> None:
        """Return once no call has started for QUIET_S (at most QUIET_MAX_S from now)."""
        deadline = time.monotonic() + QUIET_MAX_S
        # The end moves with each call: no event marks it.
        while (wait := min(self.last_call + QUIET_S, deadline) - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)


def write_port_file(path: Path, port: int, instance_id: str, **extra: object) -> None:
    """Writes {"port", "pid", "instance_id", **extra} (extra values that are None are left out) so that a reader
    never sees a partial file (tmp + rename)."""
    content: dict[str, object] = {"port": port, "pid": os.getpid(), "instance_id": instance_id}
    content.update({k: v for k, v in extra.items() if v is not None})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content), encoding="utf-8")
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


async def _stop_when_gone(parent_pid: int, stopping: asyncio.Event) -> None:
    # Polling, because Linux's PR_SET_PDEATHSIG is not in Python's standard library. A dead parent that nobody has
    # reaped yet still answers kill(pid, 0), so a direct child also watches for being reparented.
    direct_child = os.getppid() == parent_pid
    while True:
        await asyncio.sleep(PARENT_POLL_S)
        if not _alive(parent_pid) or (direct_child and os.getppid() != parent_pid):
            break
    log.warning("parent process %d is gone; stopping", parent_pid)
    stopping.set()


@dataclasses.dataclass
class Membership:
    """This process's place in a mesh it joined on its own: the store, its record, the lease it is under."""

    kv: KV
    keys: Keys
    record: InstanceRecord
    publisher: LeasePublisher

    async def leave(self, settings: ProcessSettings) -> None:
        """Hand the recently used models over (at most handoff_grace_s), then withdraw the record."""
        if settings.handoff_grace_s > 0:
            try:
                await hand_off(
                    self.kv,
                    self.keys,
                    self.publisher,
                    self.record,
                    settings.handoff_grace_s,
                    settings.handoff_recent_s,
                )
            except Exception as exc:  # noqa: BLE001 - the store gone: leave as without a hand-off
                log.warning("draining: no hand-off (%s)", exc)
        await self.publisher.close(close_store=True)


async def _join(settings: ProcessSettings, port: int, status: rt.RuntimeStatusResponse, tls: bool) -> Membership:
    """Join the mesh on our own: publish this instance's record in its store, under a lease kept alive here."""
    endpoint = settings.advertise or f"{settings.host}:{port}"
    record = record_from_status(settings.instance_id, endpoint, status, tls=tls)
    etcd_tls = client_tls(settings.etcd_tls_ca, settings.etcd_tls_cert, settings.etcd_tls_key)
    kv, keys = open_kv(settings.kv, etcd_tls), Keys(settings.kv_prefix)
    publisher = LeasePublisher(kv, keys, settings.lease_seconds)
    await publisher.publish(record)
    log.info("published instance %s at %s in %s", settings.instance_id, endpoint, settings.kv)
    return Membership(kv, keys, record, publisher)


async def serve_runtime(
    settings: ProcessSettings,
    status: rt.RuntimeStatusResponse,
    add_services: Callable[[grpc.aio.Server], None],
    metrics_registry: CollectorRegistry | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT (or the parent's exit), then stops gracefully and removes the port file.

    status: what runtimeStatus reports, published as the instance record when settings.kv is set.
    on_stop: runs after the gRPC server stopped (an adapter stops the model server it launched).
    """
    calls = CallClock()
    server = grpc.aio.server(
        interceptors=[calls] if settings.kv else [],
        options=[
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
        ],
    )
    add_services(server)
    tls = server_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, tls.grpc_credentials()) if tls else server.add_insecure_port(address)
    uds = None
    if settings.uds is not None:
        settings.uds.unlink(missing_ok=True)  # left by a process that was killed: binding over it would fail
        uds = f"unix:{settings.uds.resolve()}"
        server.add_insecure_port(uds)
    await server.start()
    metrics_server, metrics_port = None, None
    if metrics_registry is not None and settings.metrics_port >= 0:
        metrics_server, metrics_port = await start_metrics_server(
            settings.host, settings.metrics_port, metrics_registry
        )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    watcher = None
    if settings.parent_pid is not None:
        watcher = asyncio.create_task(_stop_when_gone(settings.parent_pid, stopping), name="parent watch")

    if settings.left_marker is not None:
        settings.left_marker.unlink(missing_ok=True)  # a former run's: this one has not left
    membership = await _join(settings, port, status, tls is not None) if settings.kv else None
    # Written only once serving, so a parent that sees the file can connect at once.
    if settings.port_file is not None:
        write_port_file(settings.port_file, port, settings.instance_id, metrics_port=metrics_port, uds=uds)
    log.info("serving on %s:%d%s (pid %d)", settings.host, port, f" and {uds}" if uds else "", os.getpid())
    try:
        await stopping.wait()
        if watcher is not None:
            watcher.cancel()
        log.info("stopping (grace %.1f s)", settings.shutdown_grace_s)
        if membership is not None:
            await membership.leave(settings)  # leave routing first, then finish what is in flight
            await calls.quiet()
        if settings.left_marker is not None:
            settings.left_marker.touch()
        await server.stop(settings.shutdown_grace_s)
        if metrics_server is not None:
            await metrics_server.cleanup()
    finally:
        # A stale file would point a later reader at a port this process no longer holds.
        if settings.port_file is not None:
            settings.port_file.unlink(missing_ok=True)
        if settings.uds is not None:
            settings.uds.unlink(missing_ok=True)
        if on_stop is not None:
            await on_stop()
    log.info("stopped")
