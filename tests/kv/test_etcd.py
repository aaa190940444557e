"""EtcdKV beyond the contract: watches that survive an etcd restart, several endpoints, open_kv, compaction."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import grpc
import pytest
from harness.etcd import EtcdServer

from mesh.gen import etcd_rpc_pb2 as pb
from mesh.gen import etcd_rpc_pb2_grpc as pb_grpc
from mesh.kv import open_kv
from mesh.kv.base import Compacted, EventType, WatchEvent
from mesh.kv.etcd import EtcdKV


@pytest.fixture
def ns() -> str:
    return f"etcd-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
async def opened() -> AsyncIterator[list[EtcdKV]]:
    """Clients a test opens, closed at the end even when the test fails."""
    clients: list[EtcdKV] = []
    yield clients
    for client in clients:
        await client.close()


@pytest.fixture
def dead_endpoint() -> Iterator[str]:
    """A local port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def connect(opened: list[EtcdKV], *endpoints: str) -> EtcdKV:
    kv = EtcdKV(list(endpoints))
    opened.append(kv)
    return kv


async def next_events(watch: AsyncIterator[WatchEvent], count: int, timeout: float = 10.0) -> list[WatchEvent]:
    return [await asyncio.wait_for(anext(watch), timeout) for _ in range(count)]


def summary(events: list[WatchEvent]) -> list[tuple[EventType, str, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events]


async def test_a_watch_resumes_after_an_etcd_restart_without_losing_or_repeating_events(
    restartable_etcd: EtcdServer, opened: list[EtcdKV], ns: str
) -> None:
    kv = connect(opened, restartable_etcd.endpoint)
    async with aclosing(kv.watch_prefix(ns)) as watch:
        read = await kv.put(ns + "read", b"1")
        assert summary(await next_events(watch, 1)) == [(EventType.PUT, ns + "read", b"1", read)]
        unread = await kv.put(ns + "unread", b"2")

        await asyncio.to_thread(restartable_etcd.restart)  # the loop keeps running: the watch sees the break
        after = await kv.put(ns + "after", b"3")  # waits for the connection to come back
        deleted = await kv.put(ns + "unread", b"4") + 1
        assert await kv.delete(ns + "unread")

        events = await next_events(watch, 4)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(watch), 0.3)

    assert summary(events) == [
        (EventType.PUT, ns + "unread", b"2", unread),
        (EventType.PUT, ns + "after", b"3", after),
        (EventType.PUT, ns + "unread", b"4", deleted - 1),
        (EventType.DELETE, ns + "unread", b"", deleted),
    ]


async def test_close_ends_a_watch_that_is_waiting_for_etcd_to_come_back(
    restartable_etcd: EtcdServer, opened: list[EtcdKV], ns: str
) -> None:
    kv = connect(opened, restartable_etcd.endpoint)
    watch = kv.watch_prefix(ns)
    await kv.put(ns + "a", b"1")
    assert len(await next_events(watch, 1)) == 1

    restartable_etcd.stop()
    waiting = asyncio.create_task(anext(watch))
    deadline = asyncio.get_running_loop().time() + 10
    while watch.failed_attempts == 0:  # until the watch has failed to reopen at least once: it is retrying now
        assert asyncio.get_running_loop().time() < deadline, "the watch never noticed etcd stopped"
        await asyncio.sleep(0.02)
    await kv.close()

    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 2)


async def test_the_first_live_endpoint_serves_when_earlier_ones_are_dead(
    etcd_server: EtcdServer, opened: list[EtcdKV], dead_endpoint: str, ns: str
) -> None:
    kv = connect(opened, dead_endpoint, etcd_server.endpoint)

    async with aclosing(kv.watch_prefix(ns)) as watch:
        revision = await kv.put(ns + "k", b"v")
        got = await kv.get(ns + "k")
        event = await asyncio.wait_for(anext(watch), 5)

    assert got is not None and (got.value, got.mod_revision) == (b"v", revision)
    assert (event.kv.key, event.kv.mod_revision) == (ns + "k", revision)


def test_several_endpoints_must_be_ip_addresses() -> None:
    with pytest.raises(ValueError, match="one name that resolves"):
        EtcdKV(["etcd-a:2379", "etcd-b:2379"])
    with pytest.raises(ValueError, match="no etcd endpoint"):
        open_kv("etcd://")


async def test_open_kv_connects_to_the_etcd_endpoints_of_an_etcd_url(
    etcd_server: EtcdServer, dead_endpoint: str, ns: str
) -> None:
    kv = open_kv(f"etcd://{dead_endpoint},{etcd_server.endpoint}")
    try:
        assert isinstance(kv, EtcdKV)
        revision = await kv.put(ns + "k", b"v")
        got = await kv.get(ns + "k")
        assert got is not None and (got.value, got.create_revision) == (b"v", revision)
    finally:
        await kv.close()


async def compact(server: EtcdServer, revision: int) -> None:
    async with grpc.aio.insecure_channel(server.endpoint) as channel:
        await pb_grpc.KVStub(channel).Compact(pb.CompactionRequest(revision=revision, physical=True), timeout=10)


async def test_a_watch_from_a_compacted_revision_raises_compacted(
    etcd_server: EtcdServer, opened: list[EtcdKV], ns: str
) -> None:
    kv = connect(opened, etcd_server.endpoint)
    first = await kv.put(ns + "k", b"0")
    latest = await kv.put(ns + "k", b"1")
    await compact(etcd_server, latest)

    with pytest.raises(Compacted) as raised:
        async with aclosing(kv.watch_prefix(ns, start_revision=first)) as watch:
            await asyncio.wait_for(anext(watch), 5)

    assert raised.value.compact_revision == latest


async def test_a_watch_from_now_starts_even_when_compaction_passed_the_clients_last_revision(
    etcd_server: EtcdServer, opened: list[EtcdKV], ns: str
) -> None:
    kv, other = connect(opened, etcd_server.endpoint), connect(opened, etcd_server.endpoint)
    await kv.put(ns + "seen", b"0")  # the newest revision kv has seen, where its watches from now start
    await other.put(ns + "unseen", b"1")
    await compact(etcd_server, await other.put(ns + "unseen", b"2"))

    async with aclosing(kv.watch_prefix(ns + "w/")) as watch:
        revision = await kv.put(ns + "w/k", b"2")
        event = await asyncio.wait_for(anext(watch), 5)

    assert (event.kv.key, event.kv.mod_revision) == (ns + "w/k", revision)
