"""What the `mesh` commands share: the usage error, the management API's channel and stubs, status text, the
client flags."""

from __future__ import annotations

import argparse

import grpc

from mesh import status
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.management import management_channel
from mesh.tls import ClientTLS, client_tls

STATE_NAMES = status.STATE_NAMES


class UsageError(Exception):
    """Bad input (flags, a models file): said in one line, exit code 2."""


def client_tls_of(args: argparse.Namespace) -> ClientTLS | None:
    """TLS to reach a router whose front doors serve it (--tls-ca, and --tls-cert/--tls-key for mTLS)."""
    try:
        return client_tls(args.tls_ca, args.tls_cert, args.tls_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def channel(args: argparse.Namespace) -> grpc.Channel:
    return management_channel(args.address, client_tls_of(args))


def stub(args: argparse.Namespace) -> mm_grpc.ModelMeshStub:
    return mm_grpc.ModelMeshStub(channel(args))


def status_text(info: mm.ModelStatusInfo) -> str:
    text = STATE_NAMES[info.status]
    copies = ", ".join(f"{c.location}={STATE_NAMES[c.copyStatus]}" for c in info.modelCopyInfos)
    errors = "; ".join(info.errors)
    return text + (f" [{copies}]" if copies else "") + (f" errors: {errors}" if errors else "")


def tls_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", default="", help="the router serves TLS: trust this CA (PEM)")
    parser.add_argument("--tls-cert", default="", help="mTLS: present this client certificate (PEM)")
    parser.add_argument("--tls-key", default="", help="mTLS: the client certificate's key")


def client_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of a command that calls a router's management API."""
    p.add_argument("--address", default="127.0.0.1:8033", help="the router's gRPC address")
    p.add_argument("--timeout", type=float, default=120.0)
    tls_client_arguments(p)
    return p


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value
