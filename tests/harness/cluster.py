"""A mesh cluster of real processes on 127.0.0.1: one etcd, N runtime processes, M router processes.

Runtimes are `python -m adapters.builtin --kv etcd://...`: each publishes its own instance record under a short
lease (LEASE_SECONDS), so routers anywhere can place models on it and its record expires soon after it dies.
Routers are `python -m mesh serve --runtimes 0` on the same etcd and key prefix: they start no runtime of their
own and learn every instance from the store. Every process binds port 0 and announces its port in a port file;
its output goes to a log file (shown when a test fails, by conftest.py). `Cluster.stop` ends every process by
its pid: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from harness.etcd import EtcdServer
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.kv.etcd import EtcdKV
from mesh.placement.records import Keys, Kind, PlacementRecord
from mesh.processes import python_module_command

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 45.0  # six Python processes importing grpc and numpy at once on two cores
STOP_TIMEOUT_S = 8.0
CALL_TIMEOUT_S = 20.0
LEASE_SECONDS = 2  # the runtimes' instance lease: etcd's minimum TTL
FLUSH_SECONDS = 0.2  # MESH_LAST_USED_FLUSH_SECONDS: recency reaches the store this often
LOG_TAIL_CHARS = 12_000
LOADED = mm.ModelStatusInfo.LOADED

N = TypeVar("N", bound="Node")

# Copies follow load only where a test asks for it: a burst of requests must not add copies behind its back.
NO_SCALING = {"MESH_SCALE_UP_IN_FLIGHT": "1000000000", "MESH_SCALE_UP_RPM": "1e15"}


@dataclass
class Node:
    """One process of the cluster: a runtime or a router."""

    name: str
    popen: subprocess.Popen[bytes]
    log_file: Path
    port_file: Path
    port: int = 0
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_file.read_bytes().decode(errors="replace") if self.log_file.exists() else ""

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class Runtime(Node):
    channel: grpc.aio.Channel | None = None

    @property
    def instance_id(self) -> str:
        return self.name

    async def has(self, model_id: str) -> bool:
        """Whether this runtime process itself says the model is loaded (ModelReady on its own port)."""
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.address)
        stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        reply = await stub.ModelReady(pb.ModelReadyRequest(name=model_id), timeout=CALL_TIMEOUT_S)
        return reply.ready

    def load_requests(self, model_id: str) -> int:
        """loadModel calls this runtime received for the model (it logs each at DEBUG)."""
        return self.log().count(f"loadModel {model_id} (type ")


@dataclass
class Router(Node):
    channel: grpc.aio.Channel = field(init=False)

    def connect(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.management = mm_grpc.ModelMeshStub(self.channel)
        self.admin = admin_grpc.MeshAdminStub(self.channel)

    async def instances(self) -> dict[str, admin.InstanceEntry]:
        reply = await self.admin.ListInstances(admin.ListInstancesRequest(), timeout=CALL_TIMEOUT_S)
        return {i.instanceId: i for i in reply.instances}

    async def models(self) -> dict[str, admin.ModelEntry]:
        reply = await self.admin.ListModels(admin.ListModelsRequest(), timeout=CALL_TIMEOUT_S)
        return {m.modelId: m for m in reply.models}

    async def loaded_copies(self, model_id: str) -> set[str]:
        """Instances this router lists a LOADED copy of the model on (ListModels)."""
        entry = (await self.models()).get(model_id)
        assert entry is not None, f"{self.name} does not list model {model_id}"
        return {c.location for c in entry.status.modelCopyInfos if c.copyStatus == LOADED}


ClusterFactory = Callable[..., Awaitable["Cluster"]]
"""make_cluster's type: see conftest.py."""


def describe(outcome: object) -> str:
    """A failed call as the client saw it: the gRPC status code and message."""
    if isinstance(outcome, grpc.aio.AioRpcError):
        return f"{outcome.code().name}: {outcome.details()}"
    return repr(outcome)


def echo_request(model_id: str, value: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model_id)
    request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(value)
    return request


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str, poll: float = 0.05) -> float:
    """Poll `check` until it is true; the seconds it took. Fails with `what` after `timeout`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.1f} s: {what}")
        await asyncio.sleep(poll)
    return time.monotonic() - started


class Cluster:
    """The processes of one test's mesh, and the calls a test makes to them."""

    def __init__(self, etcd: EtcdServer, prefix: str, directory: Path) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.directory = directory
        self.runtimes: list[Runtime] = []
        self.routers: list[Router] = []
        self._retired: list[grpc.aio.Channel] = []
        self._values = itertools.count(1)

    @property
    def nodes(self) -> list[Node]:
        return [*self.runtimes, *self.routers]

    # ---- life cycle ------------------------------------------------------------------------------------

    async def start(
        self,
        runtimes: int,
        routers: int,
        capacity_bytes: int,
        env: Mapping[str, str],
        router_env: Sequence[Mapping[str, str]] = (),
        runtime_args: Sequence[str] = (),
        dataplane: str | None = None,
    ) -> None:
        """Start every process at once, wait for their port files, then until every router lists every runtime.

        `env` is for every router, `router_env[k]` for router k only (MESH_* settings); `runtime_args` are more
        flags for every runtime (python -m adapters.builtin); `dataplane` the routers' --dataplane (None: `mesh
        serve`'s default, auto).
        """
        kv = f"etcd://{self.etcd.endpoint}"
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        base_env["PYTHONUNBUFFERED"] = "1"
        for i in range(runtimes):
            instance_id = f"rt-{i}"
            command = [
                *python_module_command("adapters.builtin"),
                "--host", "127.0.0.1", "--port", "0", "--port-file", str(self.directory / f"{instance_id}.port"),
                "--instance-id", instance_id, "--capacity-bytes", str(capacity_bytes),
                "--kv", kv, "--kv-prefix", self.prefix, "--lease-seconds", str(LEASE_SECONDS),
                "--log-level", "DEBUG",
                # Stops by itself should this test process die before its teardown.
                "--parent-pid", str(os.getpid()),
                # Stopped runtimes leave at once (a test of the hand-off asks for one in runtime_args).
                "--handoff-grace-s", "0", *runtime_args,
            ]  # fmt: skip
            self.runtimes.append(self._spawn(Runtime, instance_id, command, base_env))
        shared_env = {
            **base_env,
            "MESH_KV_PREFIX": self.prefix,
            "MESH_LAST_USED_FLUSH_SECONDS": str(FLUSH_SECONDS),
            # Several routers share this host: any port a router serves must be one it picks (a no-op where the
            # setting does not exist).
            "MESH_METRICS_PORT": "0",
            **NO_SCALING,
            **env,
        }
        for i in range(routers):
            name = f"router-{i}"
            command = [
                *python_module_command("mesh"), "serve",
                "--runtimes", "0", "--no-examples", "--grpc-port", "0", "--rest-port", "-1",
                "--port-file", str(self.directory / f"{name}.port"),
                "--data-dir", str(self.directory / f"{name}-data"), "--kv", kv,
                *(("--dataplane", dataplane) if dataplane else ()),
            ]  # fmt: skip
            own = router_env[i] if i < len(router_env) else {}
            self.routers.append(self._spawn(Router, name, command, {**shared_env, **own}))
        await self._wait_for_ports()
        for router in self.routers:
            router.connect()
        expected = {r.instance_id for r in self.runtimes}
        for router in self.routers:
            await wait_until(
                lambda router=router: self._lists(router, expected), START_TIMEOUT_S, f"{router.name} lists {expected}"
            )

    def _spawn(self, kind: type[N], name: str, command: list[str], env: dict[str, str]) -> N:
        log_file = self.directory / f"{name}.log"
        with log_file.open("ab") as log:  # a restarted process goes on writing after its former self
            popen = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        return kind(name, popen, log_file, self.directory / f"{name}.port", command=command, env=env)

    async def _wait_for_ports(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        for node in self.nodes:
            while not node.port_file.exists():
                if not node.alive():
                    raise AssertionError(f"{node.name} exited with {node.popen.returncode} on start")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{node.name} wrote no port file within {START_TIMEOUT_S:.0f} s")
                await asyncio.sleep(0.05)
            announced = json.loads(node.port_file.read_text())
            assert announced["pid"] == node.pid, announced
            node.port = announced["port"] if isinstance(node, Runtime) else announced["grpc"]

    async def restart_router(self, index: int) -> Router:
        """Start router `index` again (after a kill) on the same gRPC port, data dir and store: what a supervisor
        restarting it looks like to clients, which reconnect to the same address."""
        old = self.routers[index]
        self._retired.append(old.channel)  # clients may be mid-call on it: closed at stop()
        router = await self._respawn(old, "--grpc-port")
        router.connect()
        self.routers[index] = router
        return router

    async def restart_runtime(self, index: int) -> Runtime:
        """Start runtime `index` again (after a kill), on the same port: it publishes itself as a new incarnation,
        empty, as a restarted container does."""
        old = self.runtimes[index]
        if old.channel is not None:
            self._retired.append(old.channel)
        runtime = await self._respawn(old, "--port")
        self.runtimes[index] = runtime
        return runtime

    async def _respawn(self, old: N, port_flag: str) -> N:
        assert not old.alive(), f"{old.name} is still running"
        old.port_file.unlink(missing_ok=True)
        command = list(old.command)
        command[command.index(port_flag) + 1] = str(old.port)
        node = self._spawn(type(old), old.name, command, old.env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not node.port_file.exists():
            if not node.alive() or time.monotonic() > deadline:
                raise AssertionError(f"{node.name} did not come back (exit {node.popen.poll()}):\n{node.log()[-4000:]}")
            await asyncio.sleep(0.05)
        announced = json.loads(node.port_file.read_text())
        node.port = announced["port"] if isinstance(node, Runtime) else announced["grpc"]
        return node

    @staticmethod
    async def _lists(router: Router, expected: set[str]) -> bool:
        with contextlib.suppress(grpc.aio.AioRpcError):
            return set(await router.instances()) == expected
        return False

    async def stop(self) -> None:
        """Close the channels; then, routers before runtimes (clients before the servers they call), SIGTERM every
        process still running, wait (bounded), and SIGKILL what is left."""
        for node in self.nodes:
            channel = getattr(node, "channel", None)
            if channel is not None:
                await channel.close()
        for channel in self._retired:
            await channel.close()
        for group in (self.routers, self.runtimes):
            running: list[Node] = [n for n in group if n.alive()]
            for node in running:
                with contextlib.suppress(ProcessLookupError):
                    node.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline:
                if not any(n.alive() for n in running):
                    break
                await asyncio.sleep(0.05)
            for node in running:
                node.kill()

    def logs(self) -> Iterable[tuple[str, str]]:
        """(process name, the tail of its output) for every process, etcd's included."""
        for node in self.nodes:
            # grpc's DEBUG lines ("Loaded running loop") would crowd out the runtime's own.
            text = "".join(line for line in node.log().splitlines(keepends=True) if "cygrpc" not in line)
            yield f"{node.name} (pid {node.pid})", text[-LOG_TAIL_CHARS:]
        yield "etcd", self.etcd.log()[-LOG_TAIL_CHARS:]

    # ---- calls -------------------------------------------------------------------------------------------

    async def register_echo(
        self, model_id: str, ballast_bytes: int = 0, router: int = 0, load_seconds: float = 0.0
    ) -> None:
        """Register an echo model that holds `ballast_bytes` of real memory once loaded (and reports that size),
        and takes `load_seconds` to load."""
        path = self.directory / f"{model_id}.json"
        path.write_text(json.dumps({"ballast_bytes": ballast_bytes, "load_seconds": load_seconds}))
        request = mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="echo", path=str(path)))
        await self.routers[router].management.registerModel(request, timeout=CALL_TIMEOUT_S)

    async def wait_registered(self, model_ids: Iterable[str], routers: Iterable[int] | None = None) -> None:
        """Until every router (or those named) lists every one of the models."""
        wanted = set(model_ids)
        for k in range(len(self.routers)) if routers is None else routers:
            router = self.routers[k]

            async def listed(router: Router = router) -> bool:
                return wanted <= set(await router.models())

            await wait_until(listed, 10.0, f"{router.name} lists {sorted(wanted)}")

    async def wait_copies(
        self, model_id: str, instances: set[str], routers: Iterable[int] | None = None, timeout: float = 5.0
    ) -> None:
        """Until every router (or those named) lists exactly these instances as holding a LOADED copy."""
        for k in range(len(self.routers)) if routers is None else routers:
            router = self.routers[k]

            async def listed(router: Router = router) -> bool:
                return await router.loaded_copies(model_id) == instances

            await wait_until(listed, timeout, f"{router.name} lists the copies of {model_id} on {sorted(instances)}")

    async def wait_used(self, model_id: str, since_ms: int, timeout: float = 10.0) -> None:
        """Until every router lists the model as used at or after `since_ms` (ms since the epoch): the use that one
        router saw has reached the store, and every other router's view."""
        for router in self.routers:

            async def seen(router: Router = router) -> bool:
                entry = (await router.models()).get(model_id)
                return entry is not None and entry.lastUsedTime >= since_ms

            await wait_until(seen, timeout, f"{router.name} lists {model_id} as used since {since_ms}")

    async def ensure_loaded(self, model_id: str, router: int = 0) -> None:
        request = mm.EnsureLoadedRequest(modelId=model_id, sync=True)
        status = await self.routers[router].management.ensureLoaded(request, timeout=CALL_TIMEOUT_S)
        assert status.status == LOADED, status

    async def infer(self, model_id: str, router: int = 0, timeout: float = CALL_TIMEOUT_S) -> None:
        """One ModelInfer through router `router`; the echo model must answer with the value sent."""
        value = next(self._values)
        reply = await self.routers[router].inference.ModelInfer(echo_request(model_id, value), timeout=timeout)
        assert reply.model_name == model_id, reply
        assert list(reply.raw_output_contents) == [value.to_bytes(4, "little")], reply

    async def holders(self, model_id: str) -> set[str]:
        """The live runtimes that themselves report the model loaded."""
        return {r.instance_id for r in self.runtimes if r.alive() and await r.has(model_id)}

    async def layout(self, model_ids: Iterable[str]) -> dict[str, set[str]]:
        """Live runtime instance → which of the models it reports loaded."""
        ids = list(model_ids)
        return {r.instance_id: {m for m in ids if await r.has(m)} for r in self.runtimes if r.alive()}

    def load_requests(self, model_id: str) -> dict[str, int]:
        """Per runtime (dead ones included: their logs remain), the loadModel calls it received for the model."""
        return {r.instance_id: r.load_requests(model_id) for r in self.runtimes}

    async def stored_placement(self, model_id: str) -> PlacementRecord | None:
        """The model's placement record as etcd holds it right now (not any router's view of it)."""
        kv = EtcdKV([self.etcd.endpoint], timeout=CALL_TIMEOUT_S)
        try:
            found = await kv.get(Keys(self.prefix).key(Kind.PLACEMENT, model_id))
        finally:
            await kv.close()
        return PlacementRecord.from_bytes(found.value) if found else None

    async def stored_instances(self) -> set[str]:
        """Instance ids whose (leased) records etcd holds right now."""
        keys = Keys(self.prefix)
        kv = EtcdKV([self.etcd.endpoint], timeout=CALL_TIMEOUT_S)
        try:
            found, _revision = await kv.get_prefix(keys.kind_prefix(Kind.INSTANCE))
        finally:
            await kv.close()
        return {parsed[1] for item in found if (parsed := keys.parse(item.key)) is not None}


# ---- the fixture and the failure report, for the suites that run clusters (tests/cluster, tests/faults) -------

CLUSTERS_KEY = pytest.StashKey[list[Cluster]]()
DATAPLANE_KEY = pytest.StashKey[str]()
"""The routers' --dataplane for a test's clusters, when a fixture chose one (tests/faults/conftest.py)."""


@pytest.fixture
async def make_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, etcd_server: EtcdServer
) -> AsyncIterator[ClusterFactory]:
    """make_cluster(runtimes=, routers=, capacity_bytes=, env=, router_env=, etcd=, runtime_args=): start a Cluster,
    once running.

    `env` holds MESH_* settings for every router, `router_env[k]` those for router k alone. The cluster uses the
    session's etcd under a key prefix of its own, unless `etcd` names another (a test that restarts etcd passes
    `restartable_etcd`, requested before this fixture so that it stops after the processes do). Every process
    started is stopped by pid at teardown, whatever the test did.
    """
    clusters: list[Cluster] = []
    request.node.stash[CLUSTERS_KEY] = clusters

    async def make(
        runtimes: int = 3,
        routers: int = 3,
        capacity_bytes: int = 64 * 1024 * 1024,
        env: Mapping[str, str] | None = None,
        router_env: Sequence[Mapping[str, str]] = (),
        etcd: EtcdServer | None = None,
        runtime_args: Sequence[str] = (),
    ) -> Cluster:
        directory = tmp_path / f"cluster-{len(clusters)}"
        directory.mkdir()
        cluster = Cluster(etcd or etcd_server, f"cluster-{uuid.uuid4().hex[:12]}", directory)
        clusters.append(cluster)
        dataplane = request.node.stash.get(DATAPLANE_KEY, None)
        await cluster.start(runtimes, routers, capacity_bytes, env or {}, router_env, runtime_args, dataplane)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            await cluster.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    """Attaches the output of every process of the test's clusters to a failing report."""
    report = yield
    assert isinstance(report, pytest.TestReport)
    if report.failed:
        for cluster in item.stash.get(CLUSTERS_KEY, []):
            for name, text in cluster.logs():
                report.sections.append((f"{cluster.prefix}: {name}", text or "(nothing)"))
    return report
