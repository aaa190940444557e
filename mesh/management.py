"""Channels to a router's management API (ModelMesh's and mesh's admin service), for every client of it: the CLI,
bulk registration and the Kubernetes controller."""

from __future__ import annotations

import grpc

from mesh.tls import ClientTLS

# Listings of thousands of models exceed gRPC's 4 MiB default for a received message.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]


def management_channel(address: str, tls: ClientTLS | None = None) -> grpc.Channel:
    """A blocking channel to the router at address (TLS with these files, or plaintext)."""
    if tls is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, tls.grpc_credentials(), options=CHANNEL_OPTIONS)


def management_channel_aio(address: str, tls: ClientTLS | None = None) -> grpc.aio.Channel:
    """management_channel, for asyncio callers."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, tls.grpc_credentials(), options=CHANNEL_OPTIONS)
