"""Placement state storage: one interface (base.KV) with etcd's semantics, an embedded and an etcd backend."""

from __future__ import annotations

from pathlib import Path

from mesh.kv.base import KV
from mesh.kv.etcd import EtcdKV
from mesh.kv.memory import MemoryKV
from mesh.tls import ClientTLS


def open_kv(url: str, etcd_tls: ClientTLS | None = None) -> KV:
    """The store a URL names: memory:// (ephemeral), file:///abs/path or a plain path (persistent, embedded), or
    etcd://host:port[,host:port...] (an etcd v3 cluster's client endpoints, over TLS when etcd_tls is given)."""
    if url.startswith("etcd://"):
        return EtcdKV(url.removeprefix("etcd://").rstrip("/").split(","), tls=etcd_tls)
    if url == "memory://":
        return MemoryKV()
    if url.startswith("file://") and len(url) > len("file://"):
        return MemoryKV(Path(url.removeprefix("file://")))
    if url and "://" not in url:
        return MemoryKV(Path(url))
    raise ValueError(f"unsupported KV url {url!r}; expected memory://, file://PATH or etcd://HOST:PORT")
