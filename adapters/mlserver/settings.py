"""The MLServer adapter's own settings (beside the shared AdapterSettings), filled from its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from adapters.common.envs import env_dir
from adapters.common.settings import add_launch_flags, model_types_flag
from adapters.mlserver.layout import MODEL_TYPES


@dataclass(frozen=True, slots=True)
class MLServerSettings:
    model_repository: Path = Path("mlserver-models")
    """MLServer's model repository, the folder it was started on (`mlserver start FOLDER`): the adapter writes one
    folder per model here (a model-settings.json pointing at the puller's files) and removes them at start, so it
    must be a folder of its own, outside --models-dir, seen by MLServer at the same path. A launched server's
    settings.json goes here too."""
    http_url: str = "http://127.0.0.1:8002"
    """MLServer's REST endpoint (repository API: load, unload, index), when connecting to a running server."""
    grpc_address: str = "127.0.0.1:8001"
    """MLServer's gRPC endpoint, where the router forwards inference, when connecting to a running server."""
    launch: bool = False
    """Start MLServer as a child (on free ports on 127.0.0.1) instead of connecting to one."""
    server_venv: Path = Path()
    """With launch: the venv holding MLServer and its runtimes, as made by `python -m adapters.common.envs
    mlserver`."""
    server_dir: Path = Path("mlserver-server")
    """With launch: the server's working folder, where its log (mlserver.log) and metrics files go."""
    parallel_workers: int = 1
    """With launch: MLServer's parallel_workers (inference processes per model; 0 runs models in the server's own
    process, using half the memory but serving one request at a time)."""
    model_types: tuple[str, ...] = ()
    """Model types offered to the router; empty: every known type (connecting), or the types whose MLServer
    runtime package the launched server's venv holds (launching)."""


def _workers(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_mlserver_flags(parser: argparse.ArgumentParser) -> None:
    d = MLServerSettings()
    group = parser.add_argument_group("MLServer")
    group.add_argument("--model-repository", type=Path, default=d.model_repository, help="MLServer's model repository")
    group.add_argument("--mlserver-http", default=d.http_url, help="MLServer's REST URL (connecting)")
    group.add_argument("--mlserver-grpc", default=d.grpc_address, help="MLServer's gRPC host:port (connecting)")
    add_launch_flags(group, "MLServer", "MLServer", d.server_dir, "working folder and log")
    group.add_argument(
        "--parallel-workers", type=_workers, default=d.parallel_workers, help="MLServer's parallel_workers (launching)"
    )
    group.add_argument(
        "--model-types", type=model_types_flag(MODEL_TYPES), default=d.model_types, help="comma-separated model types"
    )


def mlserver_settings(args: argparse.Namespace) -> MLServerSettings:
    return MLServerSettings(
        model_repository=args.model_repository.resolve(),
        http_url=args.mlserver_http.rstrip("/"),
        grpc_address=args.mlserver_grpc,
        launch=args.launch,
        server_venv=(args.server_venv or env_dir("mlserver")).resolve(),
        server_dir=args.server_dir.resolve(),
        parallel_workers=args.parallel_workers,
        model_types=args.model_types,
    )
