"""`python -m adapters.mlserver`: the runtime SPI for an MLServer, running (--mlserver-http/--mlserver-grpc) or
launched here (--launch)."""

from __future__ import annotations

import argparse

from adapters.common.main import run_main
from adapters.common.repository import check_apart
from adapters.common.settings import AdapterSettings
from adapters.mlserver.server import MLServer
from adapters.mlserver.settings import add_mlserver_flags, mlserver_settings


def _server(args: argparse.Namespace, settings: AdapterSettings) -> MLServer:
    options = mlserver_settings(args)
    check_apart(options.model_repository, settings.models_dir)
    return MLServer(options, max_message_bytes=settings.max_message_bytes)  # MeshError: no MLServer in the venv


def main() -> None:
    run_main("mlserver", "mesh's runtime adapter for MLServer", add_mlserver_flags, _server)


if __name__ == "__main__":
    main()
