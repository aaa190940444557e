"""`python -m adapters.kserve`: the runtime SPI for custom KServe-SDK models, in a host running (--kserve-http,
--kserve-grpc) or launched here (--launch)."""

from __future__ import annotations

import argparse

from adapters.common.main import run_main
from adapters.common.repository import check_apart
from adapters.common.settings import AdapterSettings
from adapters.kserve.server import KServeHost
from adapters.kserve.settings import add_kserve_flags, kserve_settings


def _server(args: argparse.Namespace, settings: AdapterSettings) -> KServeHost:
    options = kserve_settings(args)
    check_apart(options.model_repository, settings.models_dir)
    return KServeHost(options, max_message_bytes=settings.max_message_bytes)  # MeshError: no kserve in the venv


def main() -> None:
    run_main("kserve", "mesh's runtime adapter for custom KServe-SDK models", add_kserve_flags, _server)


if __name__ == "__main__":
    main()
