"""The KServe adapter's own settings (beside the shared AdapterSettings), filled from its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from adapters.common.envs import env_dir
from adapters.common.settings import add_launch_flags

MODEL_TYPES = ("custom",)
"""What the router places here: models whose folder holds a model.py defining a kserve.Model subclass."""


@dataclass(frozen=True, slots=True)
class KServeSettings:
    model_repository: Path = Path("kserve-models")
    """Where the adapter writes one mesh-model.json per loaded model (naming its pulled folder) for the host
    (adapters/kserve/host.py) to find by name; the host must see the same path."""
    http_url: str = "http://127.0.0.1:8080"
    """The host's REST endpoint (KServe's repository API, health, /metrics), when connecting to a running host."""
    grpc_address: str = "127.0.0.1:8081"
    """The host's gRPC endpoint, where the router forwards inference, when connecting to a running host."""
    launch: bool = False
    """Start the host as a child (on free ports on 127.0.0.1), and again whenever it dies, instead of connecting."""
    server_venv: Path = Path()
    """With launch: the venv holding kserve, as made by `python -m adapters.common.envs kserve`."""
    server_dir: Path = Path("kserve-server")
    """With launch: the host's working folder, where its log (kserve.log) goes."""
    router_url: str = "http://127.0.0.1:8008"
    """The router's REST door, where a transformer's predict calls its predictor (the model its key names)."""


def add_kserve_flags(parser: argparse.ArgumentParser) -> None:
    d = KServeSettings()
    group = parser.add_argument_group("KServe")
    group.add_argument("--model-repository", type=Path, default=d.model_repository, help="the host's repository")
    group.add_argument("--kserve-http", default=d.http_url, help="the host's REST URL (connecting)")
    group.add_argument("--kserve-grpc", default=d.grpc_address, help="the host's gRPC host:port (connecting)")
    group.add_argument(
        "--router-rest", type=_http_url, default=d.router_url,
        help="the router's REST door (http[s]://host:port), which transformers call their predictors through",
    )  # fmt: skip
    add_launch_flags(group, "the KServe host", "kserve", d.server_dir, "working folder and log")


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")) or "://" == text[-3:]:
        raise argparse.ArgumentTypeError(f"expected http://host:port or https://host:port, got {text!r}")
    return text.rstrip("/")


def kserve_settings(args: argparse.Namespace) -> KServeSettings:
    return KServeSettings(
        model_repository=args.model_repository.resolve(),
        http_url=args.kserve_http.rstrip("/"),
        grpc_address=args.kserve_grpc,
        launch=args.launch,
        server_venv=(args.server_venv or env_dir("kserve")).resolve(),
        server_dir=args.server_dir.resolve(),
        router_url=args.router_rest,
    )
