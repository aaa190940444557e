"""`python -m adapters.triton`: the runtime SPI for a Triton server, running (--triton-http/--triton-grpc) or
launched here (--launch)."""

from __future__ import annotations

import asyncio
import logging

from adapters.common.service import run_adapter
from adapters.common.settings import adapter_parser, adapter_settings
from adapters.triton.server import TritonServer
from adapters.triton.settings import add_triton_flags, triton_settings
from mesh import logs
from mesh.errors import MeshError


def main() -> None:
    parser = adapter_parser("python -m adapters.triton", "mesh's runtime adapter for Triton Inference Server")
    add_triton_flags(parser)
    args = parser.parse_args()
    settings = adapter_settings(args, "triton")
    logs.configure(
        settings.log_level,
        settings.log_format,
        text_format=f"%(asctime)s %(levelname)s triton[{settings.instance_id}] %(name)s: %(message)s",
        static_fields={"runtime": settings.instance_id},
    )
    # httpx logs every request at INFO (the unload wait polls the index): the adapter logs the events that matter.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        server = TritonServer(triton_settings(args))
    except MeshError as exc:  # no tritonserver in the venv: say how to make one, without a traceback
        parser.error(exc.message)
    asyncio.run(run_adapter(settings, server))


if __name__ == "__main__":
    main()
