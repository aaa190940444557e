"""The entry point every adapter shares: `python -m adapters.<runtime>` parses the shared flags and its server's,
configures logging, builds its ModelServer and runs the adapter process."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable

from adapters.common.model_server import ModelServer
from adapters.common.service import run_adapter
from adapters.common.settings import AdapterSettings, adapter_parser, adapter_settings
from mesh import logs
from mesh.errors import MeshError

ServerFactory = Callable[[argparse.Namespace, AdapterSettings], ModelServer]


def run_main(
    runtime: str, description: str, add_flags: Callable[[argparse.ArgumentParser], None], make_server: ServerFactory
) -> None:
    """make_server raises MeshError for what the user must fix (no server in the venv, flags that clash): it is
    said in one line, with the usage, and no traceback."""
    parser = adapter_parser(f"python -m adapters.{runtime}", description)
    add_flags(parser)
    args = parser.parse_args()
    settings = adapter_settings(args, runtime)
    logs.configure(
        settings.log_level,
        settings.log_format,
        text_format=f"%(asctime)s %(levelname)s {runtime}[{settings.instance_id}] %(name)s: %(message)s",
        static_fields={"runtime": settings.instance_id},
    )
    # httpx logs every call to the server's management API at INFO (and httpcore the wire at DEBUG): the adapter's
    # own load/unload lines say the same with the model id and timing.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        server = make_server(args, settings)
    except MeshError as exc:
        parser.error(exc.message)
    asyncio.run(run_adapter(settings, server))
