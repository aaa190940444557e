"""The built-in runtime's settings: the shared process settings with its own defaults, and a real memory limit."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.common.process_settings import ProcessSettings, add_process_arguments, process_settings


@dataclass(frozen=True, slots=True)
class RuntimeSettings(ProcessSettings):
    memory_limit_bytes: int = 0
    """A real limit, apart from the capacity reported: a load that would hold more fails RESOURCE_EXHAUSTED (as a
    server out of memory does). 0: none. Reporting a capacity above it is how tests play a runtime that lies."""


def parse_args(argv: Sequence[str] | None = None) -> RuntimeSettings:
    """Settings from command-line flags (`argv`, or sys.argv[1:] when None)."""
    d = RuntimeSettings()
    parser = argparse.ArgumentParser(
        prog="python -m adapters.builtin",
        description="mesh's built-in Python model runtime: mmesh.ModelRuntime and inference.GRPCInferenceService",
    )
    add_process_arguments(parser, d)
    parser.add_argument("--memory-limit-bytes", type=int, default=0, help="refuse loads past this many bytes held")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=d.metrics_port,
        help="serve /metrics (0 = any, -1 = off: under `mesh serve` the router serves every runtime's metrics)",
    )
    args = parser.parse_args(argv)
    return RuntimeSettings(
        **process_settings(args),
        memory_limit_bytes=args.memory_limit_bytes,
        metrics_port=args.metrics_port,
    )
