"""`mesh models`: register (one, or a file of them), list, inspect and unregister models."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from mesh import bulk
from mesh.cli.common import (
    UsageError,
    channel,
    client_arguments,
    client_tls_of,
    non_negative,
    positive,
    status_text,
    stub,
)
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm


def _register(args: argparse.Namespace) -> int:
    if args.file:
        return _bulk(args, bulk.register_all, "registered", "already present")
    _one_model(args, "register")
    if not args.type:
        raise UsageError("--type is required (or register many with -f FILE)")
    info = mm.ModelInfo(type=args.type, path=bulk.resolve_path(args.path, Path.cwd()), key=args.key)
    request = mm.RegisterModelRequest(
        modelId=args.model_id,
        modelInfo=info,
        loadNow=args.load_now,
        sync=args.sync,
        meshRequiredLabels=args.label,
        meshPinned=args.pin,
        meshMinCopies=args.min_copies,
        meshPreferredLabels=args.prefer_label,
    )
    print(f"{args.model_id}: {status_text(stub(args).registerModel(request, timeout=args.timeout))}")
    return 0


def _unregister(args: argparse.Namespace) -> int:
    if args.file:
        return _bulk(args, bulk.unregister_all, "unregistered", "not registered")
    _one_model(args, "unregister")
    stub(args).unregisterModel(mm.UnregisterModelRequest(modelId=args.model_id), timeout=args.timeout)
    print(f"{args.model_id}: unregistered")
    return 0


def _one_model(args: argparse.Namespace, verb: str) -> None:
    if not args.model_id:
        raise UsageError(f"name a model to {verb}, or give a models file with -f FILE")
    if args.json or args.path_root:
        raise UsageError("--json and --path-root apply to a models file (-f FILE)")


def _bulk(args: argparse.Namespace, call: Callable[..., Awaitable[bulk.BulkResult]], done: str, unchanged: str) -> int:
    """Register or unregister every model of a file; print a summary; non-zero exit when any failed."""
    if args.model_id:
        raise UsageError(f"give a model id or -f FILE, not both ('{args.model_id}' and {args.file})")
    if getattr(args, "load_now", False):
        raise UsageError("--load-now applies to one model; models registered from a file load on first use")
    try:
        specs = bulk.read_specs(Path(args.file), Path(args.path_root) if args.path_root else None)
    except bulk.SpecError as exc:
        raise UsageError(str(exc)) from exc
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() and not args.json else None
    try:
        result = asyncio.run(
            call(
                args.address,
                specs,
                concurrency=args.concurrency,
                timeout=args.timeout,
                progress=bar,
                tls=client_tls_of(args),
            )
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(
            json.dumps(
                {
                    done.replace(" ", "_"): result.done,
                    unchanged.replace(" ", "_"): result.unchanged,
                    "failed": [{"id": f.model_id, "code": f.code, "message": f.message} for f in result.failed],
                    "seconds": round(result.seconds, 3),
                },
                indent=2,
            )
        )
    else:
        print(_summary(result, done, unchanged))
    return 1 if result.failed else 0


def _summary(result: bulk.BulkResult, done: str, unchanged: str, shown: int = 10) -> str:
    rate = result.total / result.seconds if result.seconds else 0.0
    lines = [
        f"{done} {len(result.done)}, {unchanged} {len(result.unchanged)}, failed {len(result.failed)}"
        f" ({result.total} models in {result.seconds:.1f} s, {rate:.0f}/s)"
    ]
    for code, failures in result.failures_by_code().items():
        ids = ", ".join(f.model_id for f in failures[:shown])
        more = f" and {len(failures) - shown} more" if len(failures) > shown else ""
        lines.append(f"  {code} ({len(failures)}): {ids}{more}")
        messages = list(dict.fromkeys(f.message for f in failures))
        for message in messages[:3]:
            lines.append(f"    {message}")
        if len(messages) > 3:
            lines.append(f"    ... {len(messages) - 3} more messages")
    return "\n".join(lines)


class ProgressBar:
    """`[#####.....] 2500/5000  50%   1840/s` on one terminal line (stderr), redrawn ten times a second at most."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._drawn_at < 0.1:
            return
        self._drawn_at = now
        filled = self.WIDTH * done // total if total else self.WIDTH
        rate = done / (now - self._started) if now > self._started else 0.0
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._stream.write(f"\r[{bar}] {done}/{total} {100 * done // max(total, 1):3d}% {rate:6.0f}/s")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _status(args: argparse.Namespace) -> int:
    reply = stub(args).getModelStatus(mm.GetStatusRequest(modelId=args.model_id), timeout=args.timeout)
    print(f"{args.model_id}: {status_text(reply)}")
    return 0 if reply.status != mm.ModelStatusInfo.NOT_FOUND else 1


def _list(args: argparse.Namespace) -> int:
    stub = admin_grpc.MeshAdminStub(channel(args))
    listing = stub.ListModels(admin.ListModelsRequest(), timeout=args.timeout)
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(listing))
        return 0
    print(f"{'MODEL':<28} {'TYPE':<10} {'SIZE':>10}  STATUS")
    for m in listing.models:
        kept = ", pinned" * m.pinned + (f", min copies {m.minCopies}" if m.minCopies else "")
        print(f"{m.modelId:<28} {m.modelInfo.type:<10} {m.sizeInBytes:>10}  {status_text(m.status)}{kept}")
    for v in listing.vmodels:
        print(f"{v.vModelId:<28} {'vmodel':<10} {'':>10}  -> {v.status.activeModelId}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="register, list, inspect and unregister models")
    msub = models.add_subparsers(dest="models_command", required=True)

    def from_file(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-f", "--file", help="a YAML list of models (id, type, path, key): do them all")
        p.add_argument(
            "--path-root", help="with -f: resolve relative paths against this folder (default: the file's folder)"
        )
        p.add_argument("--concurrency", type=positive, default=bulk.DEFAULT_CONCURRENCY, help="with -f: calls at once")
        p.add_argument("--json", action="store_true", help="with -f: print the outcome per model as JSON")
        return p

    reg = from_file(
        client_arguments(msub.add_parser("register", help="register a model, or every model of a file (-f)"))
    )
    reg.add_argument("model_id", nargs="?")
    reg.add_argument("--type", help="model type, e.g. sklearn, text, echo (required for one model)")
    reg.add_argument("--path", default="", help="model file or directory")
    reg.add_argument("--key", default="", help="opaque key passed to the runtime")
    reg.add_argument("--load-now", action="store_true")
    reg.add_argument("--sync", action="store_true", help="with --load-now: wait for the load")
    reg.add_argument("--label", action="append", default=[], help="load only on instances with it (repeatable)")
    reg.add_argument(
        "--prefer-label", action="append", default=[], help="place it on instances with it first (repeatable)"
    )
    reg.add_argument("--pin", action="store_true", help="never evict it (register again without --pin to unpin)")
    reg.add_argument(
        "--min-copies",
        type=non_negative,
        default=0,
        help="keep this many copies loaded at all times, never evicted (register again to change it)",
    )
    reg.set_defaults(func=_register)
    lst = client_arguments(msub.add_parser("list", help="list registered models and vmodels"))
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)
    st = client_arguments(msub.add_parser("status", help="one model's status"))
    st.add_argument("model_id")
    st.set_defaults(func=_status)
    unreg = from_file(
        client_arguments(
            msub.add_parser("unregister", help="unregister a model, or every model of a file (-f); unload copies")
        )
    )
    unreg.add_argument("model_id", nargs="?")
    unreg.set_defaults(func=_unregister)
