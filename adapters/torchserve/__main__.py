"""`python -m adapters.torchserve`: the runtime SPI for a TorchServe server, running (--management-url,
--torchserve-grpc) or launched here (--launch)."""

from __future__ import annotations

import argparse

from adapters.common.main import run_main
from adapters.common.settings import AdapterSettings
from adapters.torchserve.server import TorchServeServer
from adapters.torchserve.settings import add_torchserve_flags, torchserve_settings


def _server(args: argparse.Namespace, settings: AdapterSettings) -> TorchServeServer:
    return TorchServeServer(torchserve_settings(args))  # MeshError: no torchserve in the venv, or no java


def main() -> None:
    run_main("torchserve", "mesh's runtime adapter for TorchServe", add_torchserve_flags, _server)


if __name__ == "__main__":
    main()
