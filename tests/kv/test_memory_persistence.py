"""MemoryKV's log: what survives a restart, compaction, and a crash mid-write."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest

from mesh.kv import open_kv
from mesh.kv.base import Compacted, KeyValue, Put
from mesh.kv.memory import MemoryKV


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "kv.log"


@pytest.fixture
async def opened() -> AsyncIterator[list[MemoryKV]]:
    """Stores a test opens, closed at the end even when the test fails."""
    stores: list[MemoryKV] = []
    yield stores
    for store in stores:
        await store.close()


def reopen(path: Path, opened: list[MemoryKV], *, fsync: bool = False) -> MemoryKV:
    store = MemoryKV(path, fsync=fsync)
    opened.append(store)
    return store


# File surgery is synchronous on purpose: it stands for what a crash or an operator leaves behind.
def read_file(path: Path) -> bytes:
    return path.read_bytes()


def write_file(path: Path, data: bytes, *, append: bool = False) -> None:
    with path.open("ab" if append else "wb") as file:
        file.write(data)


async def snapshot(kv: MemoryKV) -> tuple[list[KeyValue], int]:
    return await kv.get_prefix("")


async def test_restart_preserves_keys_values_and_revisions(log_path: Path, opened: list[MemoryKV]) -> None:
    kv = reopen(log_path, opened)
    await kv.put("models/a", b"\x00\xff\n binary")
    await kv.put("models/a", b"v2")
    await kv.txn([], [Put("models/b", b"b"), Put("models/c", b"c")])
    await kv.put("gone", b"x")
    await kv.delete("gone")
    await kv.put("unicode/é✓", b"u")
    before = await snapshot(kv)
    await kv.close()

    kv = reopen(log_path, opened)

    assert await snapshot(kv) == before
    assert await kv.get("gone") is None
    assert await kv.put("next", b"n") == before[1] + 1


async def test_lease_bound_keys_are_gone_after_restart(log_path: Path, opened: list[MemoryKV]) -> None:
    kv = reopen(log_path, opened)
    lease = await kv.grant_lease(60)
    await kv.put("durable", b"d")
    await kv.put("instances/1", b"alive", lease=lease)
    await kv.put("was-durable", b"1")
    await kv.put("was-durable", b"2", lease=lease)  # gains a lease: must not come back as b"1"
    await kv.put("was-leased", b"1", lease=lease)
    await kv.put("was-leased", b"2")  # loses its lease: survives, as its second version
    last = await kv.put("instances/2", b"alive", lease=lease)
    await kv.close()

    kv = reopen(log_path, opened)

    keys, revision = await snapshot(kv)
    assert [(k.key, k.value) for k in keys] == [("durable", b"d"), ("was-leased", b"2")]
    assert keys[1].version == 2
    assert revision == last  # writes to leased keys still advanced the revision, which never goes back


async def test_watch_history_does_not_survive_a_restart(log_path: Path, opened: list[MemoryKV]) -> None:
    kv = reopen(log_path, opened)
    first = await kv.put("a", b"1")
    await kv.close()

    kv = reopen(log_path, opened)

    with pytest.raises(Compacted):
        async with aclosing(kv.watch_prefix("", start_revision=first)) as watch:
            await anext(watch)
    async with aclosing(kv.watch_prefix("")) as watch:
        revision = await kv.put("b", b"2")
        event = await asyncio.wait_for(anext(watch), 2)
    assert event.kv.mod_revision == revision == first + 1


async def test_compaction_keeps_the_data_and_bounds_the_log(log_path: Path, opened: list[MemoryKV]) -> None:
    kv = reopen(log_path, opened)
    lease = await kv.grant_lease(60)
    for i in range(3000):
        await kv.put(f"k{i % 10}", str(i).encode())
        await kv.put("leased", b"x", lease=lease)
    before = await snapshot(kv)
    await kv.close()

    records = read_file(log_path).count(b"\n")
    assert records < 4 * 11 + 1000 + 10  # one threshold's worth at most, not the 6000 writes made
    assert not log_path.with_name(log_path.name + ".compact").exists()

    kv = reopen(log_path, opened)
    keys, revision = await snapshot(kv)
    assert keys == [k for k in before[0] if k.key != "leased"]
    assert revision == before[1]


async def test_a_torn_last_line_is_dropped_with_a_warning(
    log_path: Path, opened: list[MemoryKV], caplog: pytest.LogCaptureFixture
) -> None:
    kv = reopen(log_path, opened)
    await kv.put("a", b"1")
    revision = await kv.put("b", b"2")
    await kv.close()
    write_file(log_path, b'{"rev":99,"put":[["torn","', append=True)  # a crash mid-write

    with caplog.at_level(logging.WARNING, logger="mesh.kv.wal"):
        kv = reopen(log_path, opened)

    assert "torn" in caplog.text
    keys, current = await snapshot(kv)
    assert [k.key for k in keys] == ["a", "b"] and current == revision
    # The torn bytes were cut off, so the next record starts on a line of its own.
    await kv.put("c", b"3")
    await kv.close()
    kv = reopen(log_path, opened)
    assert [k.key for k in (await snapshot(kv))[0]] == ["a", "b", "c"]


async def test_a_corrupt_record_before_the_last_is_an_error(log_path: Path, opened: list[MemoryKV]) -> None:
    kv = reopen(log_path, opened)
    await kv.put("a", b"1")
    await kv.put("b", b"2")
    await kv.close()
    lines = read_file(log_path).split(b"\n")
    lines[1] = b"garbage"
    write_file(log_path, b"\n".join(lines))

    with pytest.raises(ValueError, match="corrupt record on line 2"):
        reopen(log_path, opened)


async def test_a_file_that_is_not_a_log_is_refused_untouched(log_path: Path, opened: list[MemoryKV]) -> None:
    log_path.parent.mkdir(parents=True)
    write_file(log_path, b"precious data\n")

    with pytest.raises(ValueError, match="not a mesh KV log"):
        reopen(log_path, opened)

    assert read_file(log_path) == b"precious data\n"


async def test_a_log_is_opened_by_one_store_at_a_time(log_path: Path, opened: list[MemoryKV]) -> None:
    first = reopen(log_path, opened)
    with pytest.raises(RuntimeError, match="held by another"):
        reopen(log_path, opened)

    await first.close()
    reopen(log_path, opened)


async def test_fsync_mode_persists_writes(log_path: Path, opened: list[MemoryKV]) -> None:
    kv = reopen(log_path, opened, fsync=True)
    await kv.put("a", b"1")
    await kv.close()

    kv = reopen(log_path, opened)
    got = await kv.get("a")
    assert got is not None and got.value == b"1"


async def test_open_kv_understands_memory_file_urls_and_paths(tmp_path: Path) -> None:
    ephemeral = open_kv("memory://")
    assert isinstance(ephemeral, MemoryKV)
    await ephemeral.close()

    path = tmp_path / "kv.log"
    by_url = open_kv(f"file://{path}")
    await by_url.put("a", b"1")
    await by_url.close()

    by_path = open_kv(str(path))
    try:
        got = await by_path.get("a")
        assert got is not None and got.value == b"1"
    finally:
        await by_path.close()

    for unsupported in ["redis://localhost:6379", "file://", ""]:
        with pytest.raises(ValueError, match="unsupported KV url"):
            open_kv(unsupported)
