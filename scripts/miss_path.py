"""How long the cache-miss path is to read: the functions, files and file switches one miss crosses in mesh/.

Runs a router (embedded store) in front of an in-process built-in runtime, registers an echo model, and traces
the first request for it (a miss: load, then forward) with sys.setprofile, counting only mesh's own code (not
mesh/gen, not grpc or asyncio). A "switch" is a call into a different file than the caller's: the back and forth a
reader follows.

    .venv/bin/python scripts/miss_path.py [--list]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import sys
import tempfile
from pathlib import Path
from types import FrameType

import grpc

from adapters.builtin.core import BuiltinRuntime
from adapters.builtin.servicers import InferenceServicer, RuntimeServicer
from adapters.builtin.settings import RuntimeSettings
from mesh.config import Settings
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.placement.records import ModelRecord
from mesh.proxy.dataplane import MODEL_INFER, DataPlane, Target
from mesh.router import Router

MESH = Path(__file__).resolve().parents[1] / "mesh"
# Set for the traced request only: tasks it starts (its load) inherit it, the router's background tasks and the
# in-process runtime's handlers do not.
IN_REQUEST: contextvars.ContextVar[bool] = contextvars.ContextVar("in_request", default=False)


class MissTrace:
    """The mesh functions entered (each frame once: a coroutine resumed is not a new call) and who called them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []  # (caller file, callee file, callee function)
        # Held, not just their ids: a frame freed and another made at the same address would pass for seen.
        self._seen: dict[int, FrameType] = {}

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if event != "call" or id(frame) in self._seen or not IN_REQUEST.get():
            return
        path = Path(frame.f_code.co_filename)
        if not path.is_relative_to(MESH) or path.is_relative_to(MESH / "gen"):
            return
        self._seen[id(frame)] = frame
        caller = frame.f_back
        while caller is not None and not Path(caller.f_code.co_filename).is_relative_to(MESH):
            caller = caller.f_back
        caller_file = str(Path(caller.f_code.co_filename).relative_to(MESH.parent)) if caller else "-"
        self.calls.append((caller_file, str(path.relative_to(MESH.parent)), frame.f_code.co_qualname))


async def measure(show: bool) -> None:
    settings = RuntimeSettings(instance_id="rt-0", capacity_bytes=64 << 20)
    server = grpc.aio.server()
    core = BuiltinRuntime(settings)
    rt_grpc.add_ModelRuntimeServicer_to_server(RuntimeServicer(core, settings), server)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    with tempfile.TemporaryDirectory() as data:
        router = Router(Settings(grpc_port=0, rest_port=-1, metrics_port=-1, kv="memory://", data_dir=data))
        await router.start()
        try:
            await router.add_instance("rt-0", f"127.0.0.1:{port}")
            (Path(data) / "m.json").write_text("{}")
            await router.registry.register(ModelRecord("m", "echo", str(Path(data) / "m.json")))
            request = pb.ModelInferRequest(
                model_name="m",
                inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT32", shape=[1])],
                raw_input_contents=[(1).to_bytes(4, "little")],
            ).SerializeToString()
            dataplane: DataPlane = router.dataplane
            trace = MissTrace()

            async def traced() -> None:
                IN_REQUEST.set(True)
                await dataplane.forward(MODEL_INFER, request, Target("m"))

            sys.setprofile(trace)
            try:
                await asyncio.create_task(traced())
            finally:
                sys.setprofile(None)
        finally:
            await router.stop()
            await server.stop(0)
    functions = {(f, fn) for _, f, fn in trace.calls}
    files = {f for _, f, _ in trace.calls}
    switches = sum(1 for caller, callee, _ in trace.calls if caller != callee)
    counts = f"{len(trace.calls)} calls, {len(functions)} distinct functions, {len(files)} files"
    print(f"miss path: {counts}, {switches} switches")
    print("files:", ", ".join(sorted(files)))
    if show:
        for caller, callee, function in trace.calls:
            print(f"  {caller} -> {callee}:{function}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print every call")
    asyncio.run(measure(parser.parse_args().list))


if __name__ == "__main__":
    main()
