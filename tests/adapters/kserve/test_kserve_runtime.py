"""Custom models written with the KServe Python SDK, served by the KServe adapter beside its host (the real `kserve`
package in its own venv, made by adapters.common.envs), behind an in-process router; inferred with tritonclient's
gRPC client and over the router's REST door.

One adapter (launching its host) and one router serve the module; each test registers models of its own and
unregisters them after.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as triton_aio
from azure.storage.blob import BlobServiceClient
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from harness import azurite
from harness.model_servers import AdapterProcess, MeshOverAdapter, router_over, start_adapter
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

from adapters.common.envs import ensure_env
from adapters.common.launch import free_ports
from examples.custom.build import build_iris, build_pair
from mesh.gen import model_mesh_pb2 as mm

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

LOAD_TIMEOUT_MS = 90_000
CALL_TIMEOUT_S = 90.0
PADDED_BYTES = 100_000
"""Each padded model's folder holds this many bytes, so the adapter's size estimate is 125 000 for each."""
CAPACITY_BYTES = 300_000
"""Two padded models fit (250 000), a third does not; the other tests' models are a few kB."""
REPO = Path(__file__).resolve().parents[3]
RECOVERY_S = 60.0
"""How long a client keeps retrying a neighbour of a model that killed the host."""

# Models that misbehave, each a folder with model.py, written by the tests.
RAISES_IN_LOAD = """
from kserve import Model

class NoWeights(Model):
    def load(self):
        raise RuntimeError("weights.bin is missing from the model folder")
"""
RAISES_IN_PREDICT = """
from kserve import Model

class Divides(Model):
    def load(self):
        self.ready = True
        return True

    def predict(self, payload, headers=None):
        return 1 / 0
"""
KILLS_THE_HOST = """
import os
from kserve import Model

class Crashes(Model):
    def load(self):
        self.ready = True
        return True

    def predict(self, payload, headers=None):
        os._exit(3)  # what a segfault in a native library does to the process
"""
TWO_MODELS = """
from kserve import Model

class One(Model):
    pass

class Two(Model):
    pass
"""


@dataclass
class Sources:
    root: Path
    iris: Path  # examples/custom/iris with its weights
    rows: list[str]  # iris rows as text
    species: list[str]  # what scikit-learn's own LogisticRegression predicts for them

    def custom(self, name: str, code: str) -> Path:
        folder = self.root / name
        folder.mkdir()
        (folder / "model.py").write_text(textwrap.dedent(code))
        return folder

    def padded_iris(self, name: str) -> Path:
        """The iris model padded to PADDED_BYTES, so its size is known exactly."""
        folder = build_iris(self.root / "padded" / name)
        used = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        (folder / "padding.bin").write_bytes(b"\0" * (PADDED_BYTES - used))
        return folder


@pytest.fixture(scope="module")
def kserve_venv() -> Path:
    return ensure_env("kserve")  # a failed install fails the suite: the project's own files install it


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("custom-sources")
    x, y = load_iris(return_X_y=True)
    sample = x[[0, 60, 120]]
    names = ("setosa", "versicolor", "virginica")
    expected = LogisticRegression(max_iter=500).fit(x, y).predict(sample)
    return Sources(
        root, build_iris(root), [",".join(str(v) for v in row) for row in sample], [names[i] for i in expected]
    )


def _storage_config(workdir: Path) -> Path:
    """The adapter's storage-config folder (KServe's secret, mounted): tests write their storage keys there, and
    the puller reads it on every pull."""
    folder = workdir / "storage-config"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _host_pids(adapter: AdapterProcess) -> list[int]:
    return [int(p) for p in re.findall(r"started kserve host \(pid (\d+)\)", adapter.log())]


@contextlib.contextmanager
def _adapter(workdir: Path, kserve_venv: Path, router_rest_port: int) -> Iterator[AdapterProcess]:
    adapter = start_adapter(
        "kserve",
        workdir,
        ["--models-dir", str(workdir / "models"), "--model-repository", str(workdir / "repository"),
         "--router-rest", f"http://127.0.0.1:{router_rest_port}",
         "--load-timeout-ms", str(LOAD_TIMEOUT_MS), "--max-loading-concurrency", "2",
         "--capacity-bytes", str(CAPACITY_BYTES), "--default-model-size-bytes", "10000",
         "--launch", "--server-venv", str(kserve_venv), "--server-dir", str(workdir / "server"),
         "--storage-config-dir", str(_storage_config(workdir))],
    )  # fmt: skip
    try:
        yield adapter
    finally:
        try:
            adapter.stop()
        finally:
            for pid in _host_pids(adapter):  # the host runs in a session of its own
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kserve")


@pytest.fixture(scope="module")
def router_rest_port() -> int:
    """The router's REST door, chosen before the adapter starts: transformers call their predictors through it."""
    [port] = free_ports(1, "127.0.0.1")
    return port


@pytest.fixture(scope="module")
def adapter(kserve_venv: Path, workdir: Path, router_rest_port: int) -> Iterator[AdapterProcess]:
    with _adapter(workdir, kserve_venv, router_rest_port) as started:
        yield started


@dataclass
class Mesh(MeshOverAdapter):
    client: triton_aio.InferenceServerClient  # through the router's gRPC door
    rest_url: str  # the router's REST door
    host_url: str  # the KServe host's own REST port (repository index, /metrics)
    registered: list[str] = field(default_factory=list)

    async def register(self, model_id: str, model_type: str, path: Path) -> None:
        await super().register(model_id, model_type, path)
        self.registered.append(model_id)

    async def classify(self, model_id: str, rows: list[str], **headers: str) -> triton_aio.InferResult:
        tensor = triton_aio.InferInput("rows", [len(rows)], "BYTES")
        tensor.set_data_from_numpy(np.array([r.encode() for r in rows], dtype=np.object_))
        return await self.client.infer(model_id, [tensor], headers=headers, client_timeout=CALL_TIMEOUT_S)

    async def host_models(self) -> set[str]:
        async with httpx.AsyncClient(trust_env=False) as http:
            listing = await http.get(f"{self.host_url}/v2/models", timeout=30)
        return set(listing.json()["models"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(workdir: Path, adapter: AdapterProcess, router_rest_port: int) -> AsyncIterator[Mesh]:
    [http_port] = re.findall(r"kserve host serves REST on (\d+)", adapter.log())[:1]
    async with router_over(workdir, adapter, rest_port=router_rest_port) as (router, ports):
        address = f"127.0.0.1:{ports.grpc}"
        client = triton_aio.InferenceServerClient(address)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                yield Mesh(
                    router, address, channel, client, f"http://127.0.0.1:{ports.rest}", f"http://127.0.0.1:{http_port}"
                )
        finally:
            await client.close()


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def _unregister_after(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Each test leaves the shared instance empty, so capacity is the next test's to use."""
    yield
    if "mesh" in request.fixturenames:
        mesh: Mesh = request.getfixturevalue("mesh")
        for model_id in mesh.registered:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await mesh.unregister(model_id)
        mesh.registered.clear()


async def test_a_custom_model_registered_with_the_cli_is_served_over_grpc_and_rest(
    mesh: Mesh, sources: Sources
) -> None:
    register = [sys.executable, "-m", "mesh", "models", "register", "iris-custom", "--type", "custom",
                "--path", str(sources.iris), "--address", mesh.address]  # fmt: skip
    await asyncio.to_thread(subprocess.run, register, check=True, cwd=REPO, timeout=60, capture_output=True)
    mesh.registered.append("iris-custom")
    assert (await mesh.status("iris-custom")).status == mm.ModelStatusInfo.NOT_LOADED

    result = await mesh.classify("iris-custom", sources.rows, **{"x-request-id": "grpc-1"})
    assert [s.decode() for s in result.as_numpy("species")] == sources.species
    assert result.as_numpy("probabilities").shape == (3, 3)
    assert result.get_response().id == "grpc-1"  # a gRPC header reached the model's handlers

    body = {"inputs": [{"name": "rows", "shape": [3], "datatype": "BYTES", "data": sources.rows}]}
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(
            f"{mesh.rest_url}/v2/models/iris-custom/infer", json=body, headers={"x-request-id": "rest-1"}, timeout=60
        )
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["species"] == sources.species
    assert response.json()["id"] == "rest-1"  # so did an HTTP header, through the REST door
    assert await mesh.host_models() == {"iris-custom"}


async def test_a_transformer_calls_its_predictor_through_the_router_which_loads_each_on_demand(
    mesh: Mesh, sources: Sources
) -> None:
    """KServe's transformer + predictor pair: the transformer's own preprocess and postprocess, KServe's predict
    posting the tensor to the predictor named in its model key, through the router's REST door."""
    transformer, predictor = build_pair(sources.root / "pair")
    await mesh.register("iris-predictor", "custom", predictor)
    register = [sys.executable, "-m", "mesh", "models", "register", "iris-pipeline", "--type", "custom",
                "--path", str(transformer), "--key", json.dumps({"predictor": "iris-predictor"}),
                "--address", mesh.address]  # fmt: skip
    await asyncio.to_thread(subprocess.run, register, check=True, cwd=REPO, timeout=60, capture_output=True)
    mesh.registered.append("iris-pipeline")

    result = await mesh.classify("iris-pipeline", sources.rows, **{"x-request-id": "pair-1"})
    assert [s.decode() for s in result.as_numpy("species")] == sources.species
    assert result.get_response().id == "pair-1"  # the header went on from the transformer to the predictor
    assert await mesh.host_models() == {"iris-pipeline", "iris-predictor"}  # the predictor was loaded on demand
    for model_id in ("iris-pipeline", "iris-predictor"):
        assert (await mesh.status(model_id)).status == mm.ModelStatusInfo.LOADED

    body = {"inputs": [{"name": "rows", "shape": [3], "datatype": "BYTES", "data": sources.rows}]}
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(f"{mesh.rest_url}/v2/models/iris-pipeline/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == sources.species

    # A predictor that is not there: the transformer's client is told which, and the transformer's copy stays.
    await mesh.unregister("iris-predictor")
    with pytest.raises(InferenceServerException) as refused:
        await mesh.classify("iris-pipeline", sources.rows)
    assert refused.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "the predictor answered 404" in refused.value.message()
    assert "iris-predictor" in refused.value.message()
    assert (await mesh.status("iris-pipeline")).status == mm.ModelStatusInfo.LOADED


async def test_a_transformer_without_its_predictor_or_naming_itself_fails_to_load_saying_so(
    mesh: Mesh, sources: Sources
) -> None:
    transformer, _ = build_pair(sources.root / "alone")
    await mesh.register("no-predictor", "custom", transformer)
    with pytest.raises(InferenceServerException) as refused:
        await mesh.classify("no-predictor", sources.rows)
    assert "takes a predictor_host: register it with a model key naming its predictor" in refused.value.message()

    info = mm.ModelInfo(type="custom", path=str(transformer), key=json.dumps({"predictor": "itself"}))
    await mesh.admin.registerModel(mm.RegisterModelRequest(modelId="itself", modelInfo=info))
    mesh.registered.append("itself")
    with pytest.raises(InferenceServerException) as refused:
        await mesh.classify("itself", sources.rows)
    assert "names itself as its predictor" in refused.value.message()


async def test_a_bad_request_is_the_clients_error_with_the_models_message(mesh: Mesh, sources: Sources) -> None:
    await mesh.register("iris-strict", "custom", sources.iris)
    with pytest.raises(InferenceServerException) as refused:
        await mesh.classify("iris-strict", ["5.1,3.5,not-a-number,0.2"])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "comma-separated numbers" in refused.value.message()
    body = {"inputs": [{"name": "rows", "shape": [1], "datatype": "BYTES", "data": ["1,2"]}]}
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(f"{mesh.rest_url}/v2/models/iris-strict/infer", json=body, timeout=60)
    assert response.status_code == 400
    assert "comma-separated numbers" in response.json()["error"]


async def test_models_that_raise_fail_alone_with_their_messages(mesh: Mesh, sources: Sources) -> None:
    await mesh.register("iris-neighbour", "custom", sources.iris)
    await mesh.classify("iris-neighbour", sources.rows)
    await mesh.register("no-weights", "custom", sources.custom("no-weights", RAISES_IN_LOAD))
    await mesh.register("divides", "custom", sources.custom("divides", RAISES_IN_PREDICT))
    await mesh.register("two-models", "custom", sources.custom("two-models", TWO_MODELS))

    with pytest.raises(InferenceServerException) as failed_load:
        await mesh.classify("no-weights", sources.rows)
    assert "weights.bin is missing from the model folder" in failed_load.value.message()
    status = await mesh.status("no-weights")
    assert status.status == mm.ModelStatusInfo.LOADING_FAILED
    assert "weights.bin is missing" in status.errors[0]

    with pytest.raises(InferenceServerException) as failed_predict:
        await mesh.classify("divides", sources.rows)
    assert failed_predict.value.status() == "StatusCode.INTERNAL"
    assert "ZeroDivisionError: division by zero" in failed_predict.value.message()

    with pytest.raises(InferenceServerException) as ambiguous:
        await mesh.classify("two-models", sources.rows)
    assert "exactly one subclass of kserve.Model (found: One, Two)" in ambiguous.value.message()

    result = await mesh.classify("iris-neighbour", sources.rows)  # the neighbour noticed nothing
    assert [s.decode() for s in result.as_numpy("species")] == sources.species
    assert "no-weights" not in await mesh.host_models()


async def test_a_model_that_kills_the_host_takes_it_down_and_its_neighbours_are_loaded_into_the_next(
    mesh: Mesh, sources: Sources, adapter: AdapterProcess
) -> None:
    await mesh.register("iris-survivor", "custom", sources.iris)
    await mesh.classify("iris-survivor", sources.rows)
    hosts_before = len(_host_pids(adapter))
    await mesh.register("crashes", "custom", sources.custom("crashes", KILLS_THE_HOST))

    with pytest.raises(InferenceServerException) as crashed:
        await mesh.classify("crashes", sources.rows)
    assert crashed.value.status() == "StatusCode.UNAVAILABLE"  # retryable, as any runtime that dies under a call

    # The neighbour is served again once the host is back: at once when the router's own retry finds it up, else
    # after the router's short pause for an instance that did not answer (clients retry UNAVAILABLE).
    deadline = time.monotonic() + RECOVERY_S
    while True:
        try:
            result = await mesh.classify("iris-survivor", sources.rows)
            break
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.UNAVAILABLE" and time.monotonic() < deadline, exc
            await asyncio.sleep(0.2)  # a client's pause between retries
    assert [s.decode() for s in result.as_numpy("species")] == sources.species
    assert len(_host_pids(adapter)) > hosts_before
    assert "exited with 3" in adapter.log()
    assert "iris-survivor" in await mesh.host_models()


async def test_custom_models_are_sized_and_evicted_like_any_other(mesh: Mesh, sources: Sources) -> None:
    for name in ("padded-a", "padded-b", "padded-c"):
        await mesh.register(name, "custom", sources.padded_iris(name))
    await mesh.classify("padded-a", sources.rows)
    await mesh.classify("padded-b", sources.rows)
    assert await mesh.size("padded-a") == int(PADDED_BYTES * 1.25)
    await mesh.classify("padded-a", sources.rows)  # b is now the least recently used

    await mesh.classify("padded-c", sources.rows)

    assert (await mesh.status("padded-b")).status == mm.ModelStatusInfo.NOT_LOADED
    assert {"padded-a", "padded-c"} <= await mesh.host_models()
    assert "padded-b" not in await mesh.host_models()


async def test_the_host_exposes_kserves_latency_histograms_per_model(mesh: Mesh, sources: Sources) -> None:
    await mesh.register("iris-timed", "custom", sources.iris)
    for _ in range(3):
        await mesh.classify("iris-timed", sources.rows)
    async with httpx.AsyncClient(trust_env=False) as http:
        text = (await http.get(f"{mesh.host_url}/metrics", timeout=30)).text
    for stage in ("preprocess", "predict", "postprocess"):
        count = re.search(rf'^request_{stage}_seconds_count{{model_name="iris-timed"}} (\S+)$', text, re.M)
        assert count is not None and float(count.group(1)) == 3, stage


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


async def _serves_iris(mesh: Mesh, sources: Sources, model_id: str, path: str, key: dict) -> None:
    info = mm.ModelInfo(type="custom", path=path, key=json.dumps(key))
    await mesh.admin.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info))
    mesh.registered.append(model_id)
    result = await mesh.classify(model_id, sources.rows)
    assert [s.decode() for s in result.as_numpy("species")] == sources.species, model_id


async def test_custom_models_from_gcs_and_an_http_archive_are_pulled_and_served(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    gcs = create_server("127.0.0.1", 0, in_memory=True, default_bucket="models")
    gcs.start()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(sources.iris, arcname=".")
    site = _Site({"/iris.tar.gz": archive.getvalue()})
    try:
        url = f"http://127.0.0.1:{gcs._api._httpd.server_address[1]}"  # type: ignore[attr-defined]
        client = storage.Client(project="t", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
        for name, body in _files(sources.iris).items():
            client.bucket("models").blob(f"iris/{name}").upload_from_string(body)
        (_storage_config(workdir) / "gcs").write_text(json.dumps({"type": "gcs", "endpoint_url": url}))
        await _serves_iris(mesh, sources, "iris-gcs", "gs://models/iris", {"storage_key": "gcs"})
        await _serves_iris(mesh, sources, "iris-http", f"{site.url}/iris.tar.gz", {})
    finally:
        gcs.stop()
        site.close()


@pytest.mark.skipif(azurite.missing() is not None, reason=azurite.missing() or "")
async def test_a_custom_model_from_azure_blob_storage_is_pulled_and_served(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    server = await asyncio.to_thread(azurite.Azurite, workdir / "azurite.log")
    try:
        container = BlobServiceClient.from_connection_string(server.connection_string).create_container("models")
        for name, body in _files(sources.iris).items():
            container.upload_blob(f"iris/{name}", body)
        key = {"type": "azure", "account_name": azurite.ACCOUNT, "container": "models"}
        (_storage_config(workdir) / "azure").write_text(
            json.dumps({**key, "connection_string": server.connection_string})
        )
        await _serves_iris(mesh, sources, "iris-azure", "iris", {"storage_key": "azure"})
    finally:
        server.stop()


class _Site:
    """Paths → bodies over HTTP on 127.0.0.1 (the standard library's server, in a thread)."""

    def __init__(self, pages: dict[str, bytes]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                body = pages.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
