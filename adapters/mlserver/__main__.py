"""`python -m adapters.mlserver`: the runtime SPI for an MLServer, running (--mlserver-http/--mlserver-grpc) or
launched here (--launch)."""

from __future__ import annotations

import asyncio
import logging

from adapters.common.service import run_adapter
from adapters.common.settings import adapter_parser, adapter_settings
from adapters.mlserver.server import MLServer
from adapters.mlserver.settings import add_mlserver_flags, mlserver_settings
from mesh import logs
from mesh.errors import MeshError


def main() -> None:
    parser = adapter_parser("python -m adapters.mlserver", "mesh's runtime adapter for MLServer")
    add_mlserver_flags(parser)
    args = parser.parse_args()
    settings = adapter_settings(args, "mlserver")
    logs.configure(
        settings.log_level,
        settings.log_format,
        text_format=f"%(asctime)s %(levelname)s mlserver[{settings.instance_id}] %(name)s: %(message)s",
        static_fields={"runtime": settings.instance_id},
    )
    # One line per request to MLServer's management API (and httpcore's wire-level debug) drowns the adapter's own
    # load/unload lines, which say the same with the model id and timing.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options = mlserver_settings(args)
    if options.model_repository.is_relative_to(settings.models_dir) or settings.models_dir.is_relative_to(
        options.model_repository
    ):
        # MLServer reads every model-settings.json under its repository: pulled ones would be found as models.
        parser.error(f"--model-repository {options.model_repository} and --models-dir {settings.models_dir} overlap")
    try:
        server = MLServer(options, max_message_bytes=settings.max_message_bytes)
    except MeshError as exc:  # no MLServer in the venv: say how to make one, without a traceback
        parser.error(exc.message)
    asyncio.run(run_adapter(settings, server))


if __name__ == "__main__":
    main()
