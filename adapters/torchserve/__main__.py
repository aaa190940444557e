"""`python -m adapters.torchserve`: the runtime SPI for a TorchServe server, running (--management-url,
--torchserve-grpc) or launched here (--launch)."""

from __future__ import annotations

import asyncio

from adapters.common.service import run_adapter
from adapters.common.settings import adapter_parser, adapter_settings
from adapters.torchserve.server import TorchServeServer
from adapters.torchserve.settings import add_torchserve_flags, torchserve_settings
from mesh import logs
from mesh.errors import MeshError


def main() -> None:
    parser = adapter_parser("python -m adapters.torchserve", "mesh's runtime adapter for TorchServe")
    add_torchserve_flags(parser)
    args = parser.parse_args()
    settings = adapter_settings(args, "torchserve")
    logs.configure(
        settings.log_level,
        settings.log_format,
        text_format=f"%(asctime)s %(levelname)s torchserve[{settings.instance_id}] %(name)s: %(message)s",
        static_fields={"runtime": settings.instance_id},
    )
    try:
        server = TorchServeServer(torchserve_settings(args))
    except MeshError as exc:  # no torchserve in the venv, or no java: say what is missing, without a traceback
        parser.error(exc.message)
    asyncio.run(run_adapter(settings, server))


if __name__ == "__main__":
    main()
