"""The embedded KV store's persistence: an append-only log of durable writes, replayed at start-up.

Format: ASCII JSON, one object per line; each line is appended with one write() and its "\\n" marks it complete,
so a crash can only leave an unterminated last line, which replay drops.

    {"format": "mesh-kv-log", "version": 1}
    {"rev": 7, "put": [[key, base64(value), create_revision, mod_revision, version], ...], "del": [key, ...]}

A record moves the store to revision `rev` and applies its entries. Keys attached to a lease are not kept (a
lease does not survive a restart, like an etcd lease whose holder died), so a write that touched only such
keys is logged as a bare {"rev": 7}: revisions never go back after a restart. Compaction rewrites the file as
the header plus the live keys, in put records at the store revision (written aside, fsynced, renamed over).

A lock file beside the log (`<log>.lock`, flock) keeps a second store from appending to the same log.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh.kv.base import KeyValue

logger = logging.getLogger(__name__)

# What one write does to one key: (key, before, after); after is None for a deletion.
Change = tuple[str, KeyValue | None, KeyValue | None]

_HEADER = b'{"format":"mesh-kv-log","version":1}\n'
_COMPACT_FACTOR = 4  # compact when the log holds this many entries per live key...
_COMPACT_SLACK = 1000  # ...plus this many, so a small store is not rewritten on every few writes
_SNAPSHOT_CHUNK = 1000  # keys per record in a compacted log, so no line grows with the store
_decode_json = json.JSONDecoder().decode  # json.loads less its per-call overhead, which dominates replay


class WriteAheadLog:
    """The append-only record of durable writes: replayed at start-up, compacted into a snapshot."""

    def __init__(self, path: Path, fsync: bool) -> None:
        self._path = path
        self._tmp = path.with_name(path.name + ".compact")
        self._fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(path.with_name(path.name + ".lock"))
        self._file: io.FileIO | None = None
        self._size = 0
        self._entries = 0  # entries written since the last compaction, the measure of replay work

    def replay(self) -> tuple[dict[str, KeyValue], int]:
        """The keys and store revision the log records; drops a torn last record and opens for appends."""
        started = time.monotonic()
        self._tmp.unlink(missing_ok=True)  # a compaction that died before its rename
        data = self._path.read_bytes() if self._path.exists() else b""
        kvs: dict[str, KeyValue] = {}
        revision = 1
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # what follows the last "\n" was never finished
        if complete and complete[0] + b"\n" != _HEADER or not complete and not _HEADER.startswith(tail):
            raise ValueError(f"{self._path} is not a mesh KV log")
        good = len(data) - len(tail)  # bytes up to the end of the last good record
        for number, line in enumerate(complete[1:], start=2):
            try:
                record_revision, entries = _replay_record(_decode_json(line.decode("ascii")), kvs)
            except (ValueError, KeyError, TypeError) as exc:
                if number < len(complete) or tail:
                    raise ValueError(f"{self._path}: corrupt record on line {number}") from exc
                good -= len(line) + 1  # the last line: torn like an unterminated one, but a newline got out
                break
            revision = max(revision, record_revision)
            self._entries += entries
        if good < len(data):
            logger.warning("%s: dropping a torn last record (%d bytes)", self._path, len(data) - good)
            os.truncate(self._path, good)
        self._file = open(self._path, "ab", buffering=0)
        self._size = good
        if good == 0:
            self._write(_HEADER)
        logger.info(
            "replayed %s: %d keys at revision %d in %.0f ms",
            self._path,
            len(kvs),
            revision,
            (time.monotonic() - started) * 1000,
        )
        return kvs, revision

    def append(self, revision: int, changes: Sequence[Change]) -> None:
        """Log one write; only keys without a lease are kept, and a key that gains a lease is dropped."""
        puts: list[list[Any]] = []
        deletes: list[str] = []
        for key, before, after in changes:
            if after is not None and not after.lease:
                puts.append(_entry(after))
            elif before is not None and not before.lease:
                deletes.append(key)
        record: dict[str, Any] = {"rev": revision}
        if puts:
            record["put"] = puts
        if deletes:
            record["del"] = deletes
        self._write(_line(record))
        self._entries += max(1, len(puts) + len(deletes))

    def compaction_due(self, live_keys: int) -> bool:
        """Whether replay would do enough dead work (entries per live key) that a snapshot should replace it."""
        return self._entries > _COMPACT_FACTOR * live_keys + _COMPACT_SLACK

    def compact(self, kvs: list[KeyValue], revision: int) -> None:
        """Rewrite the log as a snapshot (write aside, fsync, rename), so start-up replays keys, not history."""
        started, old_size = time.monotonic(), self._size
        try:
            with open(self._tmp, "wb") as out:
                out.write(_HEADER)
                out.write(_line({"rev": revision}))
                for i in range(0, len(kvs), _SNAPSHOT_CHUNK):
                    chunk = kvs[i : i + _SNAPSHOT_CHUNK]
                    out.write(_line({"rev": revision, "put": [_entry(kv) for kv in chunk]}))
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            os.replace(self._tmp, self._path)
        except OSError:
            logger.exception("compacting %s failed; still appending to the old log", self._path)
            self._tmp.unlink(missing_ok=True)
            self._entries = 0  # try again after another threshold's worth of writes, not on every write
            return
        assert self._file is not None
        self._file.close()
        self._file = open(self._path, "ab", buffering=0)
        self._size, self._entries = size, len(kvs)
        _fsync_dir(self._path.parent)
        logger.info(
            "compacted %s: %d -> %d bytes, %d keys, in %.0f ms",
            self._path,
            old_size,
            size,
            len(kvs),
            (time.monotonic() - started) * 1000,
        )

    def close(self) -> None:
        """Close the file and release the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None
        os.close(self._lock)  # releases the flock

    def _write(self, data: bytes) -> None:
        """Append whole records or nothing: a failed write is cut back so the next starts on a clean line."""
        assert self._file is not None
        try:
            if self._file.write(data) != len(data):
                raise OSError(f"short write to {self._path}")
            if self._fsync:
                os.fsync(self._file.fileno())
        except OSError:
            self._file.truncate(self._size)
            raise
        self._size += len(data)


def _entry(kv: KeyValue) -> list[Any]:
    return [kv.key, base64.b64encode(kv.value).decode("ascii"), kv.create_revision, kv.mod_revision, kv.version]


def _line(record: dict[str, Any]) -> bytes:
    # ensure_ascii: any str key round-trips, even one with lone surrogates, and replay can decode as ASCII.
    return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


def _replay_record(record: dict[str, Any], kvs: dict[str, KeyValue]) -> tuple[int, int]:
    """Apply one record to kvs (all of it, or none when it is malformed); returns its revision and size."""
    revision = record["rev"]
    if not isinstance(revision, int):
        raise TypeError(f"revision {revision!r} is not an int")
    puts = [
        KeyValue(key, binascii.a2b_base64(value, strict_mode=True), create, mod, version)
        for key, value, create, mod, version in record.get("put", ())
    ]
    deletes = [str(key) for key in record.get("del", ())]
    for kv in puts:
        kvs[kv.key] = kv
    for key in deletes:
        kvs.pop(key, None)
    return revision, max(1, len(puts) + len(deletes))


def _lock(path: Path) -> int:
    """Hold an exclusive lock beside the log: two stores appending to one log would corrupt it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"{path} is held by another open MemoryKV (this or another process)") from None
    return fd


def _fsync_dir(directory: Path) -> None:
    """Make a rename in directory durable; a failure costs only durability of the rename, so it is logged."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        logger.warning("could not fsync directory %s", directory, exc_info=True)
