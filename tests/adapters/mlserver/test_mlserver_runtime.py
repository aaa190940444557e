"""The MLServer adapter beside a real MLServer (its own venv, made by adapters.common.envs), behind an in-process
router, driven with tritonclient's unmodified gRPC client.

One adapter (launching its server) and one router serve the module; each test registers models of its own and
unregisters them after. The models are trained here, in the server's venv, so their files match its libraries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as triton_aio
from harness.model_servers import AdapterProcess, MeshOverAdapter, mesh_over, start_adapter
from tritonclient.utils import InferenceServerException

from adapters.common.envs import ensure_env
from adapters.mlserver.launch import LaunchedMLServer, MLServerInstall, launch
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_runtime_pb2 as rt
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.processes import python_module_command

REPO = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

LOAD_TIMEOUT_MS = 90_000
CALL_TIMEOUT_S = 90.0
PADDED_BYTES = 100_000
"""Each eviction model's folder holds this many bytes, so the adapter's size estimate is 125 000 for each."""
CAPACITY_BYTES = 300_000
"""Two padded models fit (250 000), a third does not; the other tests' models are a few kB."""

TRAIN = """
import sys
from pathlib import Path

import joblib
import lightgbm
import mlflow.sklearn
import numpy as np
import xgboost
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

root = Path(sys.argv[1])
x, y = load_iris(return_X_y=True)
classifier = LogisticRegression(max_iter=500).fit(x, y)
regressor = xgboost.XGBRegressor(n_estimators=5, max_depth=2).fit(x, y)
(root / "sklearn").mkdir()
joblib.dump(classifier, root / "sklearn" / "model.joblib")
(root / "xgboost").mkdir()
regressor.save_model(root / "xgboost" / "model.json")
booster = lightgbm.train({"objective": "regression", "num_leaves": 4, "verbose": -1, "min_data_in_leaf": 5},
                         lightgbm.Dataset(x, y.astype(float)), num_boost_round=5)
(root / "lightgbm").mkdir()
booster.save_model(str(root / "lightgbm" / "model.bst"))
# An MLflow model as a user logs one: the sklearn flavour (served through its pyfunc), with a signature.
mlflow.sklearn.save_model(classifier, root / "mlflow", signature=infer_signature(x, classifier.predict(x)))
sample = x[[0, 60, 120]]
np.savez(root / "expected.npz", x=sample, sk_predict=classifier.predict(sample),
         sk_proba=classifier.predict_proba(sample), xgb_predict=regressor.predict(sample),
         lgb_predict=booster.predict(sample))
"""


@dataclass
class Sources:
    root: Path
    sklearn: Path  # a folder holding model.joblib (LogisticRegression on iris)
    xgboost: Path  # a folder holding model.json (XGBRegressor on iris)
    lightgbm: Path  # a folder holding model.bst (a LightGBM regression booster on iris)
    mlflow: Path  # an MLflow model folder (MLmodel, model.pkl, ...): the same LogisticRegression
    expected: dict[str, np.ndarray]

    def padded(self, name: str) -> Path:
        """A folder with the sklearn model and padding up to PADDED_BYTES, so its size is known exactly."""
        folder = self.root / "padded" / name
        folder.mkdir(parents=True)
        model = (self.sklearn / "model.joblib").read_bytes()
        (folder / "model.joblib").write_bytes(model)
        (folder / "padding.bin").write_bytes(b"\0" * (PADDED_BYTES - len(model)))
        return folder

    def native(self, name: str) -> Path:
        """A folder in MLServer's own layout: a model-settings.json naming the model otherwise, a relative uri."""
        folder = self.root / "native" / name
        folder.mkdir(parents=True)
        (folder / "iris.joblib").write_bytes((self.sklearn / "model.joblib").read_bytes())
        settings = {
            "name": "named-otherwise",
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./iris.joblib", "version": "v7"},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings))
        return folder

    def broken(self) -> Path:
        folder = self.root / "broken"
        folder.mkdir(exist_ok=True)
        (folder / "model.joblib").write_bytes(b"this is not a joblib file")
        return folder / "model.joblib"


@pytest.fixture(scope="module")
def mlserver_venv() -> Path:
    return ensure_env("mlserver")  # a failed install fails the suite: the project's own files install it


@pytest.fixture(scope="module")
def sources(mlserver_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("sources")
    subprocess.run(
        [str(mlserver_venv / "bin" / "python"), "-c", textwrap.dedent(TRAIN), str(root)], check=True, timeout=300
    )
    with np.load(root / "expected.npz") as expected:
        return Sources(root, root / "sklearn", root / "xgboost", root / "lightgbm", root / "mlflow", dict(expected))


def _kill_mlservers(adapter: AdapterProcess) -> None:
    """Kill, by pid, any MLServer the adapter started that is still alive (an adapter killed mid-way leaves its
    server: the server runs in a session of its own)."""
    for pid in _mlserver_pids(adapter):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _mlserver_pids(adapter: AdapterProcess) -> list[int]:
    return [int(p) for p in re.findall(r"started mlserver \(pid (\d+)\)", adapter.log())]


@contextlib.contextmanager
def _adapter(workdir: Path, *args: str, instance_id: str = "mlserver-0") -> Iterator[AdapterProcess]:
    adapter = start_adapter(
        "mlserver",
        workdir,
        ["--models-dir", str(workdir / "models"), "--model-repository", str(workdir / "repository"),
         "--load-timeout-ms", str(LOAD_TIMEOUT_MS), "--max-loading-concurrency", "2",
         "--capacity-bytes", str(CAPACITY_BYTES), "--default-model-size-bytes", "10000", *args],
        instance_id=instance_id,
    )  # fmt: skip
    try:
        yield adapter
    finally:
        try:
            adapter.stop()
        finally:
            _kill_mlservers(adapter)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlserver")


@pytest.fixture(scope="module")
def adapter(mlserver_venv: Path, workdir: Path) -> Iterator[AdapterProcess]:
    with _adapter(
        workdir, "--launch", "--server-venv", str(mlserver_venv), "--server-dir", str(workdir / "server")
    ) as started:
        yield started


@dataclass
class Mesh(MeshOverAdapter):
    client: triton_aio.InferenceServerClient  # through the router
    direct: triton_aio.InferenceServerClient  # MLServer's own gRPC port, to see what it holds
    registered: list[str] = field(default_factory=list)

    async def register(self, model_id: str, model_type: str, path: Path) -> None:
        await super().register(model_id, model_type, path)
        self.registered.append(model_id)

    async def infer(self, model_id: str, x: np.ndarray, *outputs: str) -> dict[str, np.ndarray]:
        tensor = triton_aio.InferInput("input-0", list(x.shape), "FP64")
        tensor.set_data_from_numpy(x)
        requested = [triton_aio.InferRequestedOutput(name) for name in outputs]
        result = await self.client.infer(model_id, [tensor], outputs=requested, client_timeout=CALL_TIMEOUT_S)
        return {name: result.as_numpy(name) for name in outputs}  # MLServer gives 1-D results a column: (n, 1)

    async def mlserver_models(self) -> dict[str, str]:
        """MLServer's repository index: model name → state, for every model-settings.json it finds."""
        index = await self.direct.get_model_repository_index(as_json=True)
        return {m["name"]: m.get("state", "") for m in index.get("models", [])}


@contextlib.asynccontextmanager
async def _mesh(workdir: Path, adapter: AdapterProcess) -> AsyncIterator[Mesh]:
    async with mesh_over(workdir, adapter) as base:
        through = triton_aio.InferenceServerClient(base.address)
        direct = triton_aio.InferenceServerClient(base.data_endpoint(adapter))
        try:
            yield Mesh(base.router, base.address, base.channel, through, direct)
        finally:
            await through.close()
            await direct.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(workdir: Path, adapter: AdapterProcess) -> AsyncIterator[Mesh]:
    async with _mesh(workdir, adapter) as started:
        yield started


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


READY = "State.READY"  # how tritonclient's JSON shows MLServer's index state


async def test_a_sklearn_model_loads_on_first_request_and_infers_through_the_router(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    await mesh.register("iris-sk", "sklearn", sources.sklearn)
    assert (await mesh.status("iris-sk")).status == mm.ModelStatusInfo.NOT_LOADED

    got = await mesh.infer("iris-sk", sources.expected["x"], "predict", "predict_proba")

    np.testing.assert_array_equal(got["predict"].ravel(), sources.expected["sk_predict"])
    np.testing.assert_allclose(got["predict_proba"], sources.expected["sk_proba"], rtol=1e-6)
    assert (await mesh.status("iris-sk")).status == mm.ModelStatusInfo.LOADED
    assert (await mesh.mlserver_models())["iris-sk"] == READY
    settings = json.loads((workdir / "repository" / "iris-sk" / "model-settings.json").read_text())
    pulled = workdir / "models" / "iris-sk" / "sklearn" / "model.joblib"
    assert settings == {
        "name": "iris-sk",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(pulled)},
    }


async def test_an_mlflow_model_is_served_through_mlservers_mlflow_runtime(mesh: Mesh, sources: Sources) -> None:
    register = [*python_module_command("mesh"), "models", "register", "iris-mlflow", "--type", "mlflow",
                "--path", str(sources.mlflow), "--address", mesh.address]  # fmt: skip
    await asyncio.to_thread(subprocess.run, register, check=True, capture_output=True, timeout=60, cwd=REPO)
    mesh.registered.append("iris-mlflow")
    x = sources.expected["x"]
    tensor = triton_aio.InferInput("input-0", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x)
    result = await mesh.client.infer("iris-mlflow", [tensor], client_timeout=CALL_TIMEOUT_S)  # every output
    [output] = result.get_response().outputs  # the pyfunc's prediction, under the name MLServer gives it
    np.testing.assert_array_equal(result.as_numpy(output.name).ravel(), sources.expected["sk_predict"])
    assert (await mesh.status("iris-mlflow")).status == mm.ModelStatusInfo.LOADED
    assert (await mesh.mlserver_models())["iris-mlflow"] == READY


async def test_an_xgboost_model_loads_on_first_request_and_infers_through_the_router(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    await mesh.register("iris-xgb", "xgboost", sources.xgboost / "model.json")

    got = await mesh.infer("iris-xgb", sources.expected["x"], "predict")

    np.testing.assert_allclose(got["predict"].ravel(), sources.expected["xgb_predict"], rtol=1e-5)
    assert (await mesh.mlserver_models())["iris-xgb"] == READY
    settings = json.loads((workdir / "repository" / "iris-xgb" / "model-settings.json").read_text())
    assert settings["implementation"] == "mlserver_xgboost.XGBoostModel"
    assert settings["parameters"]["uri"] == str(workdir / "models" / "iris-xgb" / "model.json")


async def test_a_lightgbm_booster_loads_on_first_request_and_infers_through_the_router(
    mesh: Mesh, sources: Sources
) -> None:
    await mesh.register("iris-lgb", "lightgbm", sources.lightgbm)

    got = await mesh.infer("iris-lgb", sources.expected["x"], "predict")

    np.testing.assert_allclose(got["predict"].ravel(), sources.expected["lgb_predict"], rtol=1e-5)
    assert (await mesh.mlserver_models())["iris-lgb"] == READY


async def test_an_unregistered_model_is_gone_from_mlservers_index_and_both_folders(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    await mesh.register("to-unload", "sklearn", sources.sklearn)
    await mesh.infer("to-unload", sources.expected["x"], "predict")
    assert (await mesh.mlserver_models())["to-unload"] == READY

    await mesh.unregister("to-unload")

    assert "to-unload" not in await mesh.mlserver_models()
    assert not (workdir / "repository" / "to-unload").exists()
    assert not (workdir / "models" / "to-unload").exists()


async def test_the_least_recently_used_model_is_evicted_when_a_third_does_not_fit(
    mesh: Mesh, sources: Sources, adapter: AdapterProcess
) -> None:
    x = sources.expected["x"]
    for name in ("lru-a", "lru-b", "lru-c"):
        await mesh.register(name, "sklearn", sources.padded(name))
    await mesh.infer("lru-a", x, "predict")
    await mesh.infer("lru-b", x, "predict")
    await asyncio.sleep(0.05)
    await mesh.infer("lru-a", x, "predict")  # now b is the least recently used
    assert {n for n, s in (await mesh.mlserver_models()).items() if s == READY} >= {"lru-a", "lru-b"}

    await mesh.infer("lru-c", x, "predict")

    loaded = {n for n, s in (await mesh.mlserver_models()).items() if s == READY}
    assert {"lru-a", "lru-c"} <= loaded and "lru-b" not in loaded
    assert (await mesh.status("lru-b")).status == mm.ModelStatusInfo.NOT_LOADED
    assert (await mesh.status("lru-a")).status == mm.ModelStatusInfo.LOADED
    placements = mesh.router.manager.view.placements
    sizes = {n: placements[n].record.copies[adapter.instance_id].size_bytes for n in ("lru-a", "lru-c")}
    assert sizes == {"lru-a": 125_000, "lru-c": 125_000}  # bytes on disk × 1.25: MLServer reports no memory


async def test_a_broken_model_file_fails_to_load_with_mlservers_message(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    broken = sources.broken()
    await mesh.register("broken", "sklearn", broken)

    with pytest.raises(InferenceServerException) as failure:
        await mesh.infer("broken", sources.expected["x"], "predict")

    # The router answers a failed load with ModelLoadFailed: INTERNAL, the adapter's message inside.
    assert failure.value.status() == "StatusCode.INTERNAL"
    message = str(failure.value)
    assert "MLServer could not load model 'broken'" in message
    assert f"mlserver_sklearn.SKLearnModel from {workdir / 'models' / 'broken' / 'model.joblib'}" in message
    assert re.search(r"\): builtins\.\w+Error: ", message), message  # MLServer's own error, from joblib
    status = await mesh.status("broken")
    assert status.status == mm.ModelStatusInfo.LOADING_FAILED
    assert any("could not load model 'broken'" in error for error in status.errors)
    assert "broken" not in await mesh.mlserver_models()
    assert not (workdir / "repository" / "broken").exists()


async def test_a_model_with_its_own_model_settings_is_served_under_its_mesh_id(
    mesh: Mesh, sources: Sources, workdir: Path
) -> None:
    await mesh.register("native", "sklearn", sources.native("native"))

    got = await mesh.infer("native", sources.expected["x"], "predict")

    np.testing.assert_array_equal(got["predict"].ravel(), sources.expected["sk_predict"])
    assert (await mesh.client.get_model_metadata("native", as_json=True))["name"] == "native"
    assert (await mesh.mlserver_models())["native"] == READY
    settings = json.loads((workdir / "repository" / "native" / "model-settings.json").read_text())
    assert settings["name"] == "native"
    assert settings["parameters"] == {"uri": str(workdir / "models" / "native" / "native" / "iris.joblib"),
                                      "version": "v7"}  # fmt: skip
    assert "named-otherwise" not in await mesh.mlserver_models()


async def test_a_model_id_mlserver_cannot_name_is_refused_before_pulling(
    mesh: Mesh, adapter: AdapterProcess, sources: Sources, workdir: Path
) -> None:
    async with grpc.aio.insecure_channel(adapter.endpoint) as channel:
        spi = rt_grpc.ModelRuntimeStub(channel)
        request = rt.LoadModelRequest(modelId="a/b", modelType="sklearn", modelPath=str(sources.sklearn))
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await spi.loadModel(request, timeout=CALL_TIMEOUT_S)
        assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "contains '/'" in (failure.value.details() or "")
        # Unloading a name MLServer can't hold is a no-op, like any model it does not have.
        await spi.unloadModel(rt.UnloadModelRequest(modelId="a/b"), timeout=CALL_TIMEOUT_S)
    assert not any(p.name.startswith("a%2Fb") for p in (workdir / "models").iterdir())


async def test_stopping_the_adapter_stops_the_mlserver_it_launched(mesh: Mesh, adapter: AdapterProcess) -> None:
    # Last in the module: it stops the shared adapter.
    pids = _mlserver_pids(adapter)
    assert len(pids) == 1

    assert await asyncio.to_thread(adapter.stop) == 0

    assert _living_in_group(pids[0]) == []


def _living_in_group(pgid: int) -> list[str]:
    """The processes of a process group that are not zombies (an orphan's zombie waits on whatever init this
    machine has, which need not reap it), as "pid command"."""
    living = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            command, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
            if int(rest[2]) == pgid and rest[0] != "Z":
                living.append(f"{stat.parent.name} {command}")
    return living


@pytest_asyncio.fixture(loop_scope="module")
async def running_mlserver(mlserver_venv: Path, tmp_path: Path) -> AsyncIterator[LaunchedMLServer]:
    """An MLServer started apart from any adapter, as in a pod where it is its own container."""
    install = MLServerInstall.find(mlserver_venv)
    started = await launch(install, tmp_path / "repository", tmp_path / "server", 1, 64 * 1024 * 1024, timeout=120)
    try:
        yield started
    finally:
        await started.process.stop()


async def test_connecting_to_a_running_mlserver_unloads_what_it_held_then_serves(
    running_mlserver: LaunchedMLServer, sources: Sources, tmp_path: Path
) -> None:
    leftover = tmp_path / "repository" / "leftover"
    leftover.mkdir()
    (leftover / "model-settings.json").write_text(
        json.dumps({"name": "leftover", "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": str(sources.sklearn / "model.joblib")}})
    )  # fmt: skip
    async with triton_aio.InferenceServerClient(running_mlserver.grpc_address) as direct:
        await direct.load_model("leftover")
        assert await direct.is_model_ready("leftover")

        workdir = tmp_path / "adapter"
        args = ("--mlserver-http", running_mlserver.http_url, "--mlserver-grpc", running_mlserver.grpc_address)
        with _adapter(workdir, *args, "--model-repository", str(tmp_path / "repository"), instance_id="mls-c") as a:
            index = await direct.get_model_repository_index(as_json=True)
            assert [m.get("state") for m in index["models"]] == ["State.UNAVAILABLE"], "the adapter empties it"
            assert leftover.exists(), "a folder the adapter did not write is not its to delete"

            async with _mesh(workdir, a) as mesh:
                assert mesh.router.manager.view.instances["mls-c"].record.data_endpoint == running_mlserver.grpc_address
                await mesh.register("iris", "sklearn", sources.sklearn)
                got = await mesh.infer("iris", sources.expected["x"], "predict")
                np.testing.assert_array_equal(got["predict"].ravel(), sources.expected["sk_predict"])
                assert await direct.is_model_ready("iris")
