"""The KV contract: etcd v3's semantics, proved against every backend through the KV interface only.

A backend joins by adding a param to the `backend` fixture. Keys live under a per-test namespace, so a
backend may share one server between tests; revisions are only ever compared with each other.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.etcd import EtcdServer

from mesh.kv.base import (
    KV,
    Compacted,
    Compare,
    CompareTarget,
    Delete,
    EventType,
    LeaseNotFound,
    Put,
    WatchEvent,
)
from mesh.kv.etcd import EtcdKV
from mesh.kv.memory import MemoryKV

# Small, so that the compaction test can outrun it with a few writes; other tests stay well inside it.
MEMORY_HISTORY = 64


@dataclass(frozen=True)
class Backend:
    kv: KV
    # The shortest lease TTL the backend honours (etcd rounds small TTLs up to its minimum).
    lease_ttl: float
    # Events the backend keeps for watches from the past; None when the contract cannot force compaction.
    history: int | None


def _open_memory(tmp_path: Path, persistent: bool) -> Backend:
    path = tmp_path / "kv.log" if persistent else None
    return Backend(MemoryKV(path, history=MEMORY_HISTORY), lease_ttl=0.3, history=MEMORY_HISTORY)


def _open_etcd(request: pytest.FixtureRequest) -> Backend:
    server: EtcdServer = request.getfixturevalue("etcd_server")  # started only when an etcd test runs
    # etcd's shortest lease is 2 s with its default election timeout; its history is compacted only on request.
    return Backend(EtcdKV([server.endpoint]), lease_ttl=2.0, history=None)


def _open_etcd_container(request: pytest.FixtureRequest) -> Backend:
    endpoint: str = request.getfixturevalue("etcd_container")  # skips cleanly where no Docker engine exists
    return Backend(EtcdKV([endpoint]), lease_ttl=2.0, history=None)


@pytest.fixture(params=["memory", "memory-persistent", "etcd", "etcd-container"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "etcd":
        opened = _open_etcd(request)
    elif request.param == "etcd-container":
        opened = _open_etcd_container(request)
    else:
        opened = _open_memory(tmp_path, persistent=request.param == "memory-persistent")
    try:
        yield opened
    finally:
        await opened.kv.close()


@pytest.fixture
def kv(backend: Backend) -> KV:
    return backend.kv


@pytest.fixture
def ns() -> str:
    return f"contract-{uuid.uuid4().hex[:8]}/"


async def next_event(watch: AsyncIterator[WatchEvent], timeout: float = 2.0) -> WatchEvent:
    return await asyncio.wait_for(anext(watch), timeout)


async def next_events(watch: AsyncIterator[WatchEvent], count: int, timeout: float = 2.0) -> list[WatchEvent]:
    return [await next_event(watch, timeout) for _ in range(count)]


async def no_event(watch: AsyncIterator[WatchEvent], within: float = 0.05) -> bool:
    try:
        await asyncio.wait_for(anext(watch), within)
    except TimeoutError:
        return True
    return False


def summary(events: list[WatchEvent]) -> list[tuple[EventType, str, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events]


async def current_revision(kv: KV) -> int:
    return (await kv.get_prefix("\x00never-a-key-prefix/"))[1]


# Put, get, delete and revisions


async def test_put_returns_consecutive_revisions_and_get_reads_the_key(kv: KV, ns: str) -> None:
    first = await kv.put(ns + "a", b"1")
    second = await kv.put(ns + "b", b"2")

    assert second == first + 1
    got = await kv.get(ns + "a")
    assert got is not None
    assert (got.key, got.value, got.create_revision, got.mod_revision, got.version, got.lease) == (
        ns + "a",
        b"1",
        first,
        first,
        1,
        0,
    )


async def test_get_of_a_missing_key_is_none(kv: KV, ns: str) -> None:
    assert await kv.get(ns + "missing") is None


async def test_overwrite_bumps_version_and_mod_revision_but_keeps_create_revision(kv: KV, ns: str) -> None:
    created = await kv.put(ns + "k", b"1")
    modified = await kv.put(ns + "k", b"2")

    got = await kv.get(ns + "k")
    assert got is not None
    assert (got.value, got.create_revision, got.mod_revision, got.version) == (b"2", created, modified, 2)


async def test_delete_bumps_the_revision_and_recreation_restarts_version(kv: KV, ns: str) -> None:
    await kv.put(ns + "k", b"1")
    before_delete = await kv.put(ns + "k", b"2")

    assert await kv.delete(ns + "k") is True
    assert await current_revision(kv) == before_delete + 1
    assert await kv.get(ns + "k") is None

    recreated = await kv.put(ns + "k", b"3")
    got = await kv.get(ns + "k")
    assert got is not None
    assert (got.create_revision, got.mod_revision, got.version) == (recreated, recreated, 1)


async def test_delete_of_a_missing_key_is_false_and_keeps_the_revision(kv: KV, ns: str) -> None:
    await kv.put(ns + "other", b"x")
    before = await current_revision(kv)

    assert await kv.delete(ns + "missing") is False
    assert await current_revision(kv) == before


async def test_values_are_arbitrary_bytes(kv: KV, ns: str) -> None:
    value = bytes(range(256)) + b"\n\r\x00"
    await kv.put(ns + "bin", value)

    got = await kv.get(ns + "bin")
    assert got is not None and got.value == value


async def test_get_prefix_is_sorted_and_does_not_leak_neighbouring_prefixes(kv: KV, ns: str) -> None:
    for key in ["a/bc", "a/b/y", "b/x", "a/b/x", "a/a", "a/b"]:
        last = await kv.put(ns + key, key.encode())

    under_dir, revision = await kv.get_prefix(ns + "a/b/")
    under_name, _ = await kv.get_prefix(ns + "a/b")

    assert [kv.key for kv in under_dir] == [ns + "a/b/x", ns + "a/b/y"]
    assert [kv.key for kv in under_name] == [ns + "a/b", ns + "a/b/x", ns + "a/b/y", ns + "a/bc"]
    assert revision == last
    assert (await kv.get_prefix(ns + "c/"))[0] == []


async def test_get_prefix_revision_is_the_store_revision(kv: KV, ns: str) -> None:
    last = await kv.put(ns + "x", b"1")
    assert (await kv.get_prefix(ns + "nothing-here/"))[1] == last


# Transactions


async def test_txn_applies_every_success_op_at_one_revision(kv: KV, ns: str) -> None:
    old = await kv.put(ns + "old", b"o")

    result = await kv.txn(
        [Compare.mod_revision(ns + "old", old)],
        [Put(ns + "a", b"1"), Put(ns + "b", b"2"), Delete(ns + "old")],
    )

    assert result.succeeded and result.revision == old + 1
    a, b = await kv.get(ns + "a"), await kv.get(ns + "b")
    assert a is not None and b is not None
    assert a.mod_revision == b.mod_revision == result.revision
    assert await kv.get(ns + "old") is None


async def test_txn_runs_the_failure_branch_when_a_compare_fails(kv: KV, ns: str) -> None:
    current = await kv.put(ns + "k", b"1")

    result = await kv.txn(
        [Compare.mod_revision(ns + "k", current - 1)],
        [Put(ns + "k", b"won")],
        [Put(ns + "lost", b"yes")],
    )

    assert not result.succeeded and result.revision == current + 1
    got = await kv.get(ns + "k")
    assert got is not None and got.value == b"1"
    assert await kv.get(ns + "lost") is not None


async def test_txn_that_writes_nothing_keeps_the_revision(kv: KV, ns: str) -> None:
    current = await kv.put(ns + "k", b"1")

    held = await kv.txn([Compare.mod_revision(ns + "k", current)], [])
    failed = await kv.txn([Compare.mod_revision(ns + "k", 0)], [Put(ns + "k", b"2")])
    deleted_nothing = await kv.txn([], [Delete(ns + "missing")])

    assert (held.succeeded, held.revision) == (True, current)
    assert (failed.succeeded, failed.revision) == (False, current)
    assert deleted_nothing.revision == current


async def test_compare_absent_holds_only_for_a_missing_key(kv: KV, ns: str) -> None:
    first = await kv.txn([Compare.absent(ns + "k")], [Put(ns + "k", b"1")])
    second = await kv.txn([Compare.absent(ns + "k")], [Put(ns + "k", b"2")])

    assert first.succeeded and not second.succeeded
    got = await kv.get(ns + "k")
    assert got is not None and got.value == b"1"


async def test_compare_on_version_and_value(kv: KV, ns: str) -> None:
    await kv.put(ns + "k", b"v1")
    await kv.put(ns + "k", b"v2")

    async def holds(compare: Compare) -> bool:
        return (await kv.txn([compare], [])).succeeded

    assert await holds(Compare(ns + "k", CompareTarget.VERSION, 2))
    assert not await holds(Compare(ns + "k", CompareTarget.VERSION, 1))
    assert await holds(Compare(ns + "k", CompareTarget.VALUE, b"v2"))
    assert not await holds(Compare(ns + "k", CompareTarget.VALUE, b"v1"))
    # As in etcd: a value compare on a missing key never holds, not even against b"".
    assert not await holds(Compare(ns + "missing", CompareTarget.VALUE, b""))
    assert await holds(Compare.mod_revision(ns + "missing", 0))


async def test_txn_refuses_to_put_a_key_twice(kv: KV, ns: str) -> None:
    with pytest.raises(ValueError):
        await kv.txn([], [Put(ns + "k", b"1"), Put(ns + "k", b"2")])
    with pytest.raises(ValueError):
        await kv.txn([], [Put(ns + "k", b"1"), Delete(ns + "k")])
    assert await kv.get(ns + "k") is None


async def test_cas_put_and_cas_delete(kv: KV, ns: str) -> None:
    assert await kv.cas_put(ns + "k", b"1", 0)
    assert not await kv.cas_put(ns + "k", b"again", 0)
    got = await kv.get(ns + "k")
    assert got is not None

    assert not await kv.cas_delete(ns + "k", got.mod_revision + 1)
    assert await kv.cas_delete(ns + "k", got.mod_revision)
    assert await kv.get(ns + "k") is None


async def test_concurrent_cas_increments_lose_nothing(kv: KV, ns: str) -> None:
    key = ns + "counter"

    async def increment() -> None:
        while True:
            current = await kv.get(key)
            await asyncio.sleep(0)  # let the other tasks race between the read and the write
            count = 0 if current is None else int(current.value)
            expected = 0 if current is None else current.mod_revision
            if await kv.cas_put(key, str(count + 1).encode(), expected):
                return

    await asyncio.wait_for(asyncio.gather(*(increment() for _ in range(50))), 10)

    got = await kv.get(key)
    assert got is not None and got.value == b"50" and got.version == 50


# Leases


async def test_put_with_an_unknown_lease_raises_and_writes_nothing(kv: KV, ns: str) -> None:
    with pytest.raises(LeaseNotFound):
        await kv.put(ns + "k", b"1", lease=987654321)
    assert await kv.get(ns + "k") is None


async def test_lease_expiry_deletes_its_keys_with_delete_events(backend: Backend, ns: str) -> None:
    kv = backend.kv
    lease = await kv.grant_lease(backend.lease_ttl)
    await kv.put(ns + "b", b"1", lease=lease)
    await kv.put(ns + "a", b"2", lease=lease)
    keep = await kv.put(ns + "keep", b"3")
    got = await kv.get(ns + "a")
    assert got is not None and got.lease == lease

    async with aclosing(kv.watch_prefix(ns, start_revision=keep + 1)) as watch:
        events = await next_events(watch, 2, timeout=backend.lease_ttl + 5)

    assert {(e.type, e.kv.key, e.kv.value) for e in events} == {
        (EventType.DELETE, ns + "a", b""),
        (EventType.DELETE, ns + "b", b""),
    }
    assert events[0].kv.mod_revision == events[1].kv.mod_revision  # one revision for the whole lease
    assert await kv.get(ns + "a") is None and await kv.get(ns + "b") is None
    assert await kv.get(ns + "keep") is not None


async def test_keep_alive_extends_a_lease(backend: Backend, ns: str) -> None:
    kv = backend.kv
    lease = await kv.grant_lease(backend.lease_ttl)
    await kv.put(ns + "k", b"1", lease=lease)

    loop = asyncio.get_running_loop()
    until = loop.time() + 2 * backend.lease_ttl
    while loop.time() < until:
        assert await kv.keep_alive(lease)
        await asyncio.sleep(backend.lease_ttl / 4)

    assert await kv.get(ns + "k") is not None


async def test_revoke_deletes_the_keys_at_once(kv: KV, ns: str) -> None:
    lease = await kv.grant_lease(60)
    await kv.put(ns + "k", b"1", lease=lease)

    async with aclosing(kv.watch_prefix(ns)) as watch:
        await kv.revoke_lease(lease)
        assert await kv.get(ns + "k") is None
        event = await next_event(watch)

    assert (event.type, event.kv.key) == (EventType.DELETE, ns + "k")
    assert not await kv.keep_alive(lease)


async def test_revoking_an_unknown_lease_does_nothing(kv: KV) -> None:
    await kv.revoke_lease(987654321)


async def test_keep_alive_on_an_expired_lease_returns_false(backend: Backend, ns: str) -> None:
    kv = backend.kv
    lease = await kv.grant_lease(backend.lease_ttl)
    put = await kv.put(ns + "k", b"1", lease=lease)

    async with aclosing(kv.watch_prefix(ns, start_revision=put + 1)) as watch:
        event = await next_event(watch, timeout=backend.lease_ttl + 5)

    assert event.type is EventType.DELETE
    assert not await kv.keep_alive(lease)
    with pytest.raises(LeaseNotFound):
        await kv.put(ns + "k", b"2", lease=lease)


async def test_putting_a_key_without_its_lease_detaches_it(kv: KV, ns: str) -> None:
    lease = await kv.grant_lease(60)
    await kv.put(ns + "k", b"leased", lease=lease)
    await kv.put(ns + "k", b"free")

    await kv.revoke_lease(lease)

    got = await kv.get(ns + "k")
    assert got is not None and (got.value, got.lease, got.version) == (b"free", 0, 2)


# Watches


async def test_watch_from_now_sees_later_writes_in_order(kv: KV, ns: str) -> None:
    await kv.put(ns + "w/before", b"0")

    async with aclosing(kv.watch_prefix(ns + "w/")) as watch:
        r1 = await kv.put(ns + "w/a", b"1")
        await kv.put(ns + "elsewhere", b"x")
        r2 = await kv.put(ns + "w/b", b"2")
        r3 = await kv.put(ns + "w/a", b"3")
        assert await kv.delete(ns + "w/a")
        events = await next_events(watch, 4)
        assert await no_event(watch)

    assert summary(events) == [
        (EventType.PUT, ns + "w/a", b"1", r1),
        (EventType.PUT, ns + "w/b", b"2", r2),
        (EventType.PUT, ns + "w/a", b"3", r3),
        (EventType.DELETE, ns + "w/a", b"", r3 + 1),
    ]
    assert events[2].kv.version == 2 and events[2].kv.create_revision == r1


async def test_watch_from_a_past_revision_replays_history_then_goes_live(kv: KV, ns: str) -> None:
    await kv.put(ns + "skipped", b"0")
    r1 = await kv.put(ns + "a", b"1")
    txn = await kv.txn([], [Put(ns + "b", b"2"), Put(ns + "c", b"3")])
    r3 = await kv.put(ns + "a", b"4")

    async with aclosing(kv.watch_prefix(ns, start_revision=r1)) as watch:
        replayed = await next_events(watch, 4)
        live = await kv.put(ns + "d", b"5")
        latest = await next_event(watch)

    assert summary(replayed) == [
        (EventType.PUT, ns + "a", b"1", r1),
        (EventType.PUT, ns + "b", b"2", txn.revision),
        (EventType.PUT, ns + "c", b"3", txn.revision),
        (EventType.PUT, ns + "a", b"4", r3),
    ]
    assert summary([latest]) == [(EventType.PUT, ns + "d", b"5", live)]


async def test_two_watchers_are_independent(kv: KV, ns: str) -> None:
    async with aclosing(kv.watch_prefix(ns)) as everything, aclosing(kv.watch_prefix(ns + "x/")) as only_x:
        await kv.put(ns + "y/1", b"y")
        rx = await kv.put(ns + "x/1", b"x")
        assert [e.kv.key for e in await next_events(everything, 2)] == [ns + "y/1", ns + "x/1"]

        await everything.aclose()
        await kv.put(ns + "x/2", b"x")

        assert summary(await next_events(only_x, 2)) == [
            (EventType.PUT, ns + "x/1", b"x", rx),
            (EventType.PUT, ns + "x/2", b"x", rx + 1),
        ]


async def test_closed_watch_ends_iteration(kv: KV, ns: str) -> None:
    watch = kv.watch_prefix(ns)
    await kv.put(ns + "a", b"1")
    assert (await next_event(watch)).kv.key == ns + "a"

    await watch.aclose()  # type: ignore[attr-defined]
    await kv.put(ns + "b", b"2")

    with pytest.raises(StopAsyncIteration):
        await next_event(watch)


async def test_breaking_out_of_a_watch_leaves_the_store_working(kv: KV, ns: str) -> None:
    await kv.put(ns + "a", b"1")
    async for event in kv.watch_prefix(ns, start_revision=await current_revision(kv)):
        assert event.kv.key == ns + "a"
        break

    async with aclosing(kv.watch_prefix(ns)) as watch:
        revision = await kv.put(ns + "b", b"2")
        assert (await next_event(watch)).kv.mod_revision == revision


async def test_watch_from_a_compacted_revision_raises_compacted(backend: Backend, ns: str) -> None:
    if backend.history is None:
        pytest.skip("this backend's compaction cannot be forced through the KV interface")
    kv = backend.kv
    first = await kv.put(ns + "k", b"0")
    for i in range(backend.history + 10):
        await kv.put(ns + "k", str(i).encode())

    with pytest.raises(Compacted) as raised:
        async with aclosing(kv.watch_prefix(ns, start_revision=first)) as watch:
            await next_event(watch)

    assert raised.value.compact_revision > first


async def test_close_ends_every_watch(backend: Backend, ns: str) -> None:
    kv = backend.kv
    start = await current_revision(kv) + 1
    received: list[WatchEvent] = []
    got_one = asyncio.Event()

    async def consume() -> None:
        async for event in kv.watch_prefix(ns, start_revision=start):
            received.append(event)
            got_one.set()

    consumer = asyncio.create_task(consume())
    await kv.put(ns + "a", b"1")
    await asyncio.wait_for(got_one.wait(), 2)

    await kv.close()
    await asyncio.wait_for(consumer, 2)
    assert [e.kv.key for e in received] == [ns + "a"]
    await kv.close()  # idempotent: the fixture closes again
