"""`python -m adapters.triton`: the runtime SPI for a Triton server, running (--triton-http/--triton-grpc) or
launched here (--launch)."""

from __future__ import annotations

import argparse

from adapters.common.main import run_main
from adapters.common.settings import AdapterSettings
from adapters.triton.server import TritonServer
from adapters.triton.settings import add_triton_flags, triton_settings


def _server(args: argparse.Namespace, settings: AdapterSettings) -> TritonServer:
    return TritonServer(triton_settings(args))  # MeshError: no tritonserver in the venv, and how to make one


def main() -> None:
    run_main("triton", "mesh's runtime adapter for Triton Inference Server", add_triton_flags, _server)


if __name__ == "__main__":
    main()
