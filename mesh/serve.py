"""`mesh serve`: the embedded default. A router plus N built-in runtime processes, supervised, on one machine (and
any runtimes running apart that --runtime-endpoint names, such as adapters beside MLServer or TorchServe)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import multiprocess

from mesh.config import Settings
from mesh.engine.frontdoor import native_engine
from mesh.errors import MeshError
from mesh.placement.records import ModelRecord
from mesh.processes import python_module_command
from mesh.router import Ports, Router

log = logging.getLogger(__name__)

RUNTIME_START_TIMEOUT = 60.0
UDS_PATH_MAX = 100
"""A unix socket path must fit sockaddr_un's 108 bytes; a longer one (a deep TMPDIR) leaves the runtime on TCP."""
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


@dataclass(frozen=True)
class ServeOptions:
    runtimes: int = 2
    capacity_bytes: int = 2 * 1024 * 1024
    examples_dir: Path | None = EXAMPLES_DIR
    port_file: Path | None = None
    log_level: str = "INFO"
    """Passed down to the runtime processes, so they log like the router."""
    log_format: str = "text"
    runtime_endpoints: tuple[tuple[str, str], ...] = ()
    """(instance id, endpoint) of runtimes running apart from this process (adapters): probed and routed to,
    not started or supervised here."""
    runtime_labels: tuple[str, ...] = ()
    """Labels the runtime_endpoints carry besides those they report (a runtime serving the SPI itself reports
    none): models that require them load there."""


class RuntimeProcess:
    """One built-in runtime child process, found through the port file it writes once it serves."""

    def __init__(
        self,
        instance_id: str,
        capacity_bytes: int,
        workdir: Path,
        log_level: str = "INFO",
        log_format: str = "text",
        metrics_dir: Path | None = None,
        uds: bool = True,
    ) -> None:
        """metrics_dir: where the process writes its metrics (prometheus_client's multiprocess mode); uds: serve
        (and be registered) on a unix-domain socket in workdir, for routers on this host only."""
        self.instance_id = instance_id
        self.capacity_bytes = capacity_bytes
        self.log_level = log_level
        self.log_format = log_format
        self.port_file = workdir / f"{instance_id}.port"
        # The router is on the same host: it dials the runtime's unix socket, which skips TCP's loopback stack.
        socket_path = workdir.resolve() / f"{instance_id}.sock"
        self.uds = socket_path if uds and len(str(socket_path)) <= UDS_PATH_MAX else None
        self.metrics_dir = metrics_dir
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> str:
        """Start the process and return its endpoint once it listens: unix:PATH, or 127.0.0.1:PORT without one."""
        self.port_file.unlink(missing_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *python_module_command("adapters.builtin"),
            "--host", "127.0.0.1", "--port", "0", "--port-file", str(self.port_file),
            "--capacity-bytes", str(self.capacity_bytes), "--instance-id", self.instance_id,
            "--parent-pid", str(os.getpid()), *(("--uds", str(self.uds)) if self.uds else ()),
            "--log-level", self.log_level, "--log-format", self.log_format,
            env=None if self.metrics_dir is None else {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)},
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RUNTIME_START_TIMEOUT
        while not self.port_file.exists():
            if self.process.returncode is not None:
                raise RuntimeError(f"runtime {self.instance_id} exited with {self.process.returncode} on start")
            if loop.time() > deadline:
                raise RuntimeError(f"runtime {self.instance_id} did not start within {RUNTIME_START_TIMEOUT:.0f}s")
            await asyncio.sleep(0.05)
        announced = json.loads(self.port_file.read_text())
        return announced.get("uds") or f"127.0.0.1:{announced['port']}"

    async def stop(self, grace: float = 5.0) -> None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def load_example_models(examples_dir: Path, dest: Path) -> list[ModelRecord]:
    """Build the example models shipped in examples/ into dest and describe them for registration."""
    spec = importlib.util.spec_from_file_location("mesh_examples_build", examples_dir / "build_models.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no build_models.py in {examples_dir}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build_examples(dest)
    return [ModelRecord(m.model_id, m.model_type, str(Path(m.path).resolve())) for m in built]


class EmbeddedMesh:
    """Router + runtimes as one unit: start, supervise (restart a runtime that dies), stop."""

    def __init__(self, settings: Settings, options: ServeOptions) -> None:
        self.settings = settings
        self.options = options
        self._workdir = Path(tempfile.mkdtemp(prefix="mesh-runtimes-"))
        # The runtimes' metrics, aggregated into the router's /metrics: fresh for each mesh, as multiprocess mode needs.
        self._metrics_dir = self._workdir / "metrics"
        self._metrics_dir.mkdir()
        self.router = Router(settings, runtime_metrics_dir=self._metrics_dir)
        self.runtimes = [
            RuntimeProcess(
                f"runtime-{i}",
                options.capacity_bytes,
                self._workdir,
                options.log_level,
                options.log_format,
                metrics_dir=self._metrics_dir,
                # An instance record in etcd is read by routers on other hosts, which can't dial a local socket; a
                # native engine cannot be pointed at one at run time.
                uds=not settings.kv_url().startswith("etcd://") and native_engine(settings) is None,
            )
            for i in range(options.runtimes)
        ]
        self._supervisors: list[asyncio.Task[None]] = []

    async def start(self) -> Ports:
        """Start the router, then the runtimes, then register the examples; ready only once all of that is done."""
        starting = "adding the runtimes and registering the example models"
        ports = await self.router.start(hold_ready=starting)
        try:
            endpoints = await asyncio.gather(*(r.start() for r in self.runtimes))
            for runtime, endpoint in zip(self.runtimes, endpoints, strict=True):
                await self.router.add_instance(runtime.instance_id, endpoint, tls=False)  # our child: plaintext
                self._supervisors.append(asyncio.create_task(self._supervise(runtime)))
            for instance_id, endpoint in self.options.runtime_endpoints:
                await self.router.add_instance(instance_id, endpoint, labels=self.options.runtime_labels)
            if self.options.examples_dir is not None:
                await self._register_examples(self.options.examples_dir)
            await self.router.readiness.release(starting)
        except BaseException:
            await self.stop()
            raise
        return ports

    async def _register_examples(self, examples_dir: Path) -> None:
        dest = Path(self.settings.data_dir) / "examples"
        models = await asyncio.to_thread(load_example_models, examples_dir, dest)
        for model in models:
            try:
                await self.router.registry.register(model)
            except MeshError as exc:
                log.warning("example model %s not registered: %s", model.model_id, exc.message)
        log.info("registered %d example models: %s", len(models), ", ".join(m.model_id for m in models))

    async def _supervise(self, runtime: RuntimeProcess) -> None:
        """Restart a runtime process that exits while the mesh runs; its copies are dropped and reloaded."""
        while True:
            assert runtime.process is not None
            code = await runtime.process.wait()
            multiprocess.mark_process_dead(runtime.process.pid, str(self._metrics_dir))  # its gauges leave the sum
            try:
                await self.router.remove_instance(runtime.instance_id)  # nothing is routed to a dead process
            except Exception as exc:  # noqa: BLE001 - the store is down, say: the restart below publishes it again
                log.warning("runtime %s not withdrawn: %s", runtime.instance_id, exc)
            await asyncio.sleep(1.0)  # a Ctrl-C reaches the runtimes too; stop() cancels this wait then
            log.error("runtime %s exited with %s; restarting it", runtime.instance_id, code)
            try:
                endpoint = await runtime.start()
                await self.router.add_instance(runtime.instance_id, endpoint, tls=False)  # our child: plaintext
            except (RuntimeError, MeshError) as exc:
                log.error("runtime %s did not come back: %s", runtime.instance_id, exc)
                return

    async def stop(self) -> None:
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.router.stop()
        await asyncio.gather(*(r.stop() for r in self.runtimes))
        shutil.rmtree(self._workdir, ignore_errors=True)


EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """asyncio.Runner's loop_factory for Settings.event_loop: uvloop's (for "uvloop", and for "auto" where uvloop is
    installed), or None for asyncio's own."""
    if name not in EVENT_LOOPS:
        raise ValueError(f"event loop {name!r} is not one of {', '.join(EVENT_LOOPS)}")
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise ValueError("event loop 'uvloop' asked for, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run(settings: Settings, options: ServeOptions) -> None:
    """serve() on the event loop settings.event_loop names."""
    with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
        runner.run(serve(settings, options))


async def serve(settings: Settings, options: ServeOptions) -> None:
    """Run until SIGINT/SIGTERM, then stop everything that was started (no orphan processes)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mesh = EmbeddedMesh(settings, options)
    ports = await mesh.start()
    if options.port_file is not None:
        tmp = options.port_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"grpc": ports.grpc, "rest": ports.rest, "metrics": ports.metrics, "pid": os.getpid()})
        )
        tmp.replace(options.port_file)
    log.info(
        "mesh is up (%s event loop): gRPC %s:%d, REST %s, metrics %s; Ctrl-C stops it",
        type(loop).__module__.split(".")[0],
        settings.host,
        ports.grpc,
        f"{settings.host}:{ports.rest}" if ports.rest else "off",
        f"{settings.host}:{ports.metrics}/metrics" if ports.metrics else "off",
    )
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await mesh.stop()
