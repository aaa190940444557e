"""Placement state storage: one interface (base.KV) with etcd's semantics, an embedded and an etcd backend."""
