"""Settings every adapter shares (its SPI endpoint, capacity, puller, joining a mesh), filled from flags.

Each adapter adds the flags of its own model server (`parser` is returned for that) and keeps them in a
settings object of its own beside this one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapters.common.process_settings import ProcessSettings, add_process_arguments, process_settings


@dataclass(frozen=True, slots=True)
class AdapterSettings(ProcessSettings):
    capacity_bytes: int = 1024 * 1024 * 1024
    """Model memory the router may fill; ModelMesh derives it from the container's memory request minus a buffer."""
    max_loading_concurrency: int = 1
    load_timeout_ms: int = 90_000
    """A load (pull + server load) that takes longer fails with DEADLINE_EXCEEDED and is undone."""
    default_model_size_bytes: int = 1_000_000
    """The size assumed before anything is known, and for predictModelSize of a remote model."""
    size_multiplier: float = 1.25
    """Model size estimate = bytes on disk × this, when the server does not report memory (ModelMesh's default)."""
    models_dir: Path = Path("models")
    """Where the puller writes each model's files (one folder per model id, removed on unload); the model server
    must see the same path (a shared volume in a pod)."""
    storage_config_dir: Path | None = None
    """KServe's storage-config secret, mounted: one JSON file per storage key (S3 credentials, bucket...)."""
    local_roots: tuple[Path, ...] = field(default_factory=tuple)
    """Local model paths must lie under one of these (empty: any absolute path)."""
    advertise_data: str = ""
    """host:port routers send inference to; defaults to the model server's own gRPC address. (Adapters serve no
    metrics of their own: the model server has its own /metrics.)"""


def adapter_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the shared flags; the adapter adds its server's flags and calls `adapter_settings`."""
    d = AdapterSettings()
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_process_arguments(parser, d)
    parser.add_argument("--size-multiplier", type=float, default=d.size_multiplier)
    parser.add_argument("--models-dir", type=Path, default=d.models_dir, help="where pulled model files go")
    parser.add_argument("--storage-config-dir", type=Path, help="KServe storage-config secret (one JSON per key)")
    parser.add_argument("--local-root", type=Path, action="append", default=[], help="allowed local model folder")
    parser.add_argument("--advertise-data", default=d.advertise_data, help="host:port routers send inference to")
    return parser


def adapter_settings(args: argparse.Namespace, runtime: str) -> AdapterSettings:
    """The shared settings from parsed flags; `runtime` names the default instance id (<runtime>-<host>-<pid>)."""
    return AdapterSettings(
        **process_settings(args, runtime),
        size_multiplier=args.size_multiplier,
        models_dir=args.models_dir.resolve(),
        storage_config_dir=args.storage_config_dir,
        local_roots=tuple(p.resolve() for p in args.local_root),
        advertise_data=args.advertise_data,
    )


def add_launch_flags(
    group: argparse._ArgumentGroup, server: str, venv_holds: str, server_dir: Path, dir_holds: str
) -> None:
    """--launch, --server-venv and --server-dir: start the model server as a child from its venv, or connect."""
    group.add_argument("--launch", action="store_true", help=f"start {server} as a child process")
    group.add_argument("--server-venv", type=Path, help=f"venv with {venv_holds} (default: the envs one)")
    group.add_argument("--server-dir", type=Path, default=server_dir, help=f"launched server's {dir_holds}")


def model_types_flag(known: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """argparse type for --model-types: comma-separated, each one of `known`."""

    def parse(text: str) -> tuple[str, ...]:
        types = tuple(t.strip() for t in text.split(",") if t.strip())
        unknown = [t for t in types if t not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown model types {unknown}; known: {', '.join(known)}")
        return types

    return parse
