"""The Triton adapter's own settings (beside the shared AdapterSettings), filled from its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from adapters.common.envs import env_dir
from adapters.common.settings import add_launch_flags, model_types_flag
from adapters.triton.layout import MODEL_TYPES


@dataclass(frozen=True, slots=True)
class TritonSettings:
    model_repository: Path = Path("triton-models")
    """Triton's --model-repository: the adapter writes one folder per model here (links into the puller's folders)
    and empties it at start, so it must be a folder of its own, seen by Triton at the same path."""
    http_url: str = "http://127.0.0.1:8000"
    """Triton's HTTP endpoint (repository API: load, unload, index), when connecting to a running server."""
    grpc_address: str = "127.0.0.1:8001"
    """Triton's gRPC endpoint, where the router forwards inference, when connecting to a running server."""
    launch: bool = False
    """Start tritonserver as a child (on free ports on 127.0.0.1, explicit model control) instead of connecting."""
    server_venv: Path = Path()
    """With launch: the venv holding tritonserver (nvidia-pytriton), as made by `python -m adapters.common.envs
    triton`."""
    home: Path | None = None
    """With launch: a full Triton build's folder (bin/tritonserver, backends/; NGC's /opt/tritonserver), run
    instead of the venv's pip build."""
    server_dir: Path = Path("triton-server")
    """With launch: where the server's backend folder and its log (triton.log) are written."""
    server_args: tuple[str, ...] = ()
    """With launch: extra tritonserver flags, e.g. --log-verbose=1."""
    model_types: tuple[str, ...] = ()
    """Model types offered to the router; empty: every type with a layout (connecting), or the types whose backend
    the launched server has (launching; the pip build has only the python backend)."""


def add_triton_flags(parser: argparse.ArgumentParser) -> None:
    d = TritonSettings()
    group = parser.add_argument_group("Triton")
    group.add_argument("--model-repository", type=Path, default=d.model_repository, help="Triton's model repository")
    group.add_argument("--triton-http", default=d.http_url, help="Triton's HTTP URL (connecting)")
    group.add_argument("--triton-grpc", default=d.grpc_address, help="Triton's gRPC host:port (connecting)")
    add_launch_flags(group, "tritonserver", "nvidia-pytriton", d.server_dir, "backends and log")
    group.add_argument(
        "--triton-home", type=Path, help="launching: a full Triton build's folder, e.g. /opt/tritonserver (default: the"
        " venv's pip build, python backend only)",
    )  # fmt: skip
    group.add_argument(
        "--server-arg", action="append", default=[], help="extra tritonserver flag when launching (repeatable)"
    )
    group.add_argument(
        "--model-types", type=model_types_flag(MODEL_TYPES), default=d.model_types, help="comma-separated model types"
    )


def triton_settings(args: argparse.Namespace) -> TritonSettings:
    return TritonSettings(
        model_repository=args.model_repository.resolve(),
        http_url=args.triton_http.rstrip("/"),
        grpc_address=args.triton_grpc,
        launch=args.launch,
        server_venv=(args.server_venv or env_dir("triton")).resolve(),
        home=args.triton_home.resolve() if args.triton_home else None,
        server_dir=args.server_dir.resolve(),
        server_args=tuple(args.server_arg),
        model_types=args.model_types,
    )
