"""The TorchServe adapter's own settings (beside the shared AdapterSettings), filled from its flags."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

from adapters.common.envs import env_dir
from adapters.common.process_settings import positive
from adapters.common.settings import add_launch_flags


@dataclass(frozen=True, slots=True)
class TorchServeSettings:
    model_store: Path = Path("torchserve-models")
    """TorchServe's --model-store: the adapter links each model here (`<id>.mar` or `<id>/`, pointing into the
    puller's folders) and empties it at start, so it must be a folder of its own, seen by TorchServe at the same
    path; the puller's models folder must be seen at the same path too (the links are absolute)."""
    management_url: str = "http://127.0.0.1:8081"
    """TorchServe's management API (register, unregister, describe), when connecting to a running server."""
    grpc_address: str = "127.0.0.1:7070"
    """TorchServe's gRPC inference port, where the router forwards inference, when connecting."""
    launch: bool = False
    """Start TorchServe as a child (on free ports on 127.0.0.1) instead of connecting to one."""
    server_venv: Path = Path()
    """The venv holding torchserve and torch-model-archiver, as made by `python -m adapters.common.envs
    torchserve`: the launched server runs from it, and folders are archived with its torch-model-archiver."""
    archiver: Path = Path()
    """torch-model-archiver, which archives a model given as a folder of parts: by default the server venv's, else
    the one on PATH (in a pod: installed in the adapter's image, `pip install torch-model-archiver`)."""
    server_dir: Path = Path("torchserve-server")
    """With launch: where config.properties, the logs and TorchServe's temp folder (extracted archives, worker
    sockets, pid file) go."""
    workers_per_model: int = 1
    """initial_workers at registration: each worker is one Python process holding the model."""
    open_inference_protocol: bool = False
    """With launch: set TS_OPEN_INFERENCE_PROTOCOL=oip, which adds TorchServe's KServe v2 gRPC service (under the
    package org.pytorch.serve.grpc.openinference). Either way the adapter asks the server whether it serves it,
    and if so offers its ModelInfer/ModelMetadata to the router."""


def add_torchserve_flags(parser: argparse.ArgumentParser) -> None:
    d = TorchServeSettings()
    group = parser.add_argument_group("TorchServe")
    group.add_argument("--model-store", type=Path, default=d.model_store, help="TorchServe's model store")
    group.add_argument("--management-url", default=d.management_url, help="TorchServe's management URL (connecting)")
    group.add_argument("--torchserve-grpc", default=d.grpc_address, help="TorchServe's gRPC inference host:port")
    add_launch_flags(group, "TorchServe", "torchserve", d.server_dir, "config and logs")
    group.add_argument("--archiver", type=Path, help="torch-model-archiver (default: the server venv's, else PATH's)")
    group.add_argument("--workers-per-model", type=positive, default=d.workers_per_model)
    group.add_argument(
        "--open-inference-protocol", action="store_true", help="launch with TorchServe's KServe v2 gRPC service"
    )


def _archiver(args: argparse.Namespace, venv: Path) -> Path:
    if args.archiver is not None:
        return args.archiver.resolve()
    in_venv = venv / "bin" / "torch-model-archiver"
    on_path = shutil.which("torch-model-archiver")
    return in_venv if in_venv.is_file() or on_path is None else Path(on_path)


def torchserve_settings(args: argparse.Namespace) -> TorchServeSettings:
    venv = (args.server_venv or env_dir("torchserve")).resolve()
    return TorchServeSettings(
        model_store=args.model_store.resolve(),
        management_url=args.management_url.rstrip("/"),
        grpc_address=args.torchserve_grpc,
        launch=args.launch,
        server_venv=venv,
        archiver=_archiver(args, venv),
        server_dir=args.server_dir.resolve(),
        workers_per_model=args.workers_per_model,
        open_inference_protocol=args.open_inference_protocol,
    )
