"""Placement state storage: one interface (base.KV) with etcd's semantics, an embedded and an etcd backend."""

from __future__ import annotations

from pathlib import Path

from mesh.kv.base import KV
from mesh.kv.memory import MemoryKV


def open_kv(url: str) -> KV:
    """The store a URL names: memory:// (ephemeral), or file:///abs/path or a plain path (persistent, embedded)."""
    if url == "memory://":
        return MemoryKV()
    if url.startswith("file://") and len(url) > len("file://"):
        return MemoryKV(Path(url.removeprefix("file://")))
    # etcd://host:port joins here with the etcd backend.
    if url and "://" not in url:
        return MemoryKV(Path(url))
    raise ValueError(f"unsupported KV url {url!r}; expected memory:// or file://PATH")
