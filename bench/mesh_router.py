"""The mesh router for the benchmark: mesh.router.Router in its own process, in front of a runtime started elsewhere.

The runtime is the one the other targets also call, so every target reaches the same process. The `echo` model is
registered here and loaded by the first request that names it. The port file also names the REST port.

    python -m bench.mesh_router --runtime 127.0.0.1:PORT --port-file FILE     (or --runtime unix:/PATH)
                                [--loop asyncio|uvloop] [--dataplane python|haproxy] [--models N --prefix P]
                                [--untimed]

--models registers N more echo models, P0 ... P<N-1>, for measuring misses (each one's first request loads it).
    python -m pyinstrument -o router.txt -m bench.mesh_router ...   (the profile is written on SIGTERM)
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from bench._serving import LOOPS, run_on, wait_for_stop, write_port_file
from mesh.config import Settings
from mesh.placement.records import ModelRecord
from mesh.router import Router

INSTANCE_ID = "bench-rt"
MODEL_ID = "echo"


async def serve(
    runtime: str,
    port_file: Path,
    dataplane: str = "python",
    models: int = 0,
    prefix: str = "",
    latency: bool = True,
) -> None:
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as workdir:
        settings = Settings(
            host="127.0.0.1",
            grpc_port=0,
            rest_port=0,
            metrics_port=0,
            kv="memory://",
            data_dir=workdir,
            dataplane=dataplane,
            dataplane_latency=latency,
        )
        router = Router(settings)
        ports = await router.start()
        try:
            await router.add_instance(INSTANCE_ID, runtime, ("echo",))
            model_path = Path(workdir) / "echo.json"
            model_path.write_text("{}", encoding="utf-8")
            await router.registry.register(ModelRecord(MODEL_ID, "echo", str(model_path)))
            for n in range(models):
                await router.registry.register(ModelRecord(f"{prefix}{n}", "echo", str(model_path)))
            write_port_file(port_file, ports.grpc, rest=ports.rest or 0)
            await wait_for_stop()
        finally:
            await router.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mesh_router", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", required=True, help="host:port or unix:PATH of a running built-in runtime")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop (default asyncio)")
    parser.add_argument("--dataplane", choices=("python", "haproxy"), default="python")
    parser.add_argument("--models", type=int, default=0, help="more echo models to register (default none)")
    parser.add_argument("--prefix", default="m", help="their ids' prefix")
    parser.add_argument("--untimed", action="store_true", help="the engine does not time requests (no latency)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s router %(name)s: %(message)s")
    serving = serve(args.runtime, args.port_file, args.dataplane, args.models, args.prefix, not args.untimed)
    run_on(args.loop, serving)


if __name__ == "__main__":
    main()
