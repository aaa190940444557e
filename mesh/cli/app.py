"""The `mesh` command's parser, and running one command: usage errors exit 2, the router's refusals 1."""

from __future__ import annotations

import argparse
import logging
import sys

import grpc
import httpx

from mesh import logs
from mesh.cli import inspect, models, run, simulate, vmodels
from mesh.cli.common import UsageError

log = logging.getLogger("mesh.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description="A multi-model serving router.")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format", choices=logs.FORMATS, default="text", help="json: one JSON object per line (ts, level, ...)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (run, models, vmodels, inspect, simulate):
        commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)

    def error(message: str) -> None:
        # With --log-format json every stderr line is a JSON object, errors included.
        if args.log_format == "json":
            log.error(message)
        else:
            print(f"error: {message}", file=sys.stderr)

    try:
        return args.func(args)
    except UsageError as exc:
        error(str(exc))
        return 2
    except grpc.RpcError as exc:
        error(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
        return 1
    except httpx.HTTPError as exc:
        error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
