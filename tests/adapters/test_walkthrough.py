"""docs/runtimes.md's walkthrough, as a user runs it: an sklearn model stored in S3 on MLServer and a TorchServe
.mar, registered with `mesh models register` and inferred through mesh's front doors (`mesh infer` over REST,
TorchServe's own Predictions over gRPC), with every process real: moto's S3 server, MLServer, TorchServe (each
launched by its adapter), and `mesh serve` routing to the adapters it is pointed at."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import boto3
import grpc
import pytest
from harness.model_servers import AdapterProcess, start_adapter
from harness.serve import REPO, ServeProcess, serving
from tiny_torch import X, Y, archive, write_parts

from adapters.common.envs import ensure_env
from mesh.gen import torchserve_inference_pb2 as ts
from mesh.gen import torchserve_inference_pb2_grpc as ts_grpc
from mesh.processes import python_module_command

pytestmark = pytest.mark.slow

ACCESS_KEY, SECRET_KEY, BUCKET = "walkthrough-key", "walkthrough-secret", "models"
TRAIN_IRIS = """
import sys

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

X, y = load_iris(return_X_y=True)
joblib.dump(LogisticRegression(max_iter=500).fit(X, y), sys.argv[1])
"""


def _mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*python_module_command("mesh"), *args], cwd=REPO, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture(scope="module")
def venvs() -> tuple[Path, Path]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("TorchServe needs Java 11+, and this machine has no `java` (install a JDK, e.g. openjdk-17)")
    return ensure_env("mlserver"), ensure_env("torchserve")


@pytest.fixture(scope="module")
def adapters(
    venvs: tuple[Path, Path], s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AdapterProcess, AdapterProcess]]:
    mlserver_venv, torchserve_venv = venvs
    work = tmp_path_factory.mktemp("walkthrough")
    storage_config = work / "storage-config"  # KServe's storage-config secret, as mounted: one JSON per key
    storage_config.mkdir()
    (storage_config / "localS3").write_text(
        json.dumps({"type": "s3", "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                    "endpoint_url": s3_endpoint, "bucket": BUCKET, "region": "us-east-1"})
    )  # fmt: skip
    mlserver = start_adapter(
        "mlserver",
        work / "mlserver",
        ["--launch", "--server-venv", str(mlserver_venv), "--models-dir", str(work / "mlserver" / "models"),
         "--model-repository", str(work / "mlserver" / "repository"), "--server-dir", str(work / "mlserver" / "server"),
         "--storage-config-dir", str(storage_config)],
    )  # fmt: skip
    try:
        torchserve = start_adapter(
            "torchserve",
            work / "torchserve",
            ["--launch", "--server-venv", str(torchserve_venv), "--server-dir", str(work / "torchserve" / "server"),
             "--model-store", str(work / "torchserve" / "store"), "--models-dir", str(work / "torchserve" / "models")],
        )  # fmt: skip
        try:
            yield mlserver, torchserve
        finally:
            torchserve.stop()
    finally:
        mlserver.stop()


@pytest.fixture(scope="module")
def mesh(
    adapters: tuple[AdapterProcess, AdapterProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    mlserver, torchserve = adapters
    with serving(
        tmp_path_factory.mktemp("serve"),
        "--runtimes", "0", "--no-examples", "--rest-port", "0", "--kv", "memory://",
        "--runtime-endpoint", f"mlserver-0={mlserver.endpoint}",
        "--runtime-endpoint", f"torchserve-0={torchserve.endpoint}",
    ) as serve:  # fmt: skip
        yield serve


def test_an_sklearn_model_in_s3_registered_with_the_cli_is_served_by_mlserver(
    mesh: ServeProcess, venvs: tuple[Path, Path], s3_endpoint: str, tmp_path: Path
) -> None:
    # Trained with the MLServer venv's scikit-learn: a pickle loads only with the version that wrote it.
    model_file = tmp_path / "model.joblib"
    train = [str(venvs[0] / "bin" / "python"), "-c", textwrap.dedent(TRAIN_IRIS), str(model_file)]
    subprocess.run(train, check=True, timeout=300)
    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )  # fmt: skip
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(model_file), BUCKET, "iris/model.joblib")

    address = f"--address=127.0.0.1:{mesh.grpc_port}"
    key = json.dumps({"storage_key": "localS3"})
    registered = _mesh(
        "models", "register", "iris-s3", "--type", "sklearn", "--path", "s3://models/iris/", "--key", key, address
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr

    inferred = _mesh("infer", "iris-s3", "--data", "[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]",
                     "--rest", f"http://127.0.0.1:{mesh.rest_port}")  # fmt: skip
    assert inferred.returncode == 0, inferred.stdout + inferred.stderr
    outputs = json.loads(inferred.stdout)["outputs"]
    assert [o["data"] for o in outputs] == [[0, 2]], outputs  # setosa, virginica

    status = _mesh("models", "status", "iris-s3", address)
    assert "LOADED" in status.stdout and "mlserver-0" in status.stdout, status.stdout


def test_a_torchserve_mar_registered_with_the_cli_answers_predictions_through_mesh(
    mesh: ServeProcess, venvs: tuple[Path, Path], tmp_path: Path
) -> None:
    mar = archive(write_parts(tmp_path / "parts", venvs[1]), venvs[1], tmp_path / "archives")
    address = f"--address=127.0.0.1:{mesh.grpc_port}"
    registered = _mesh("models", "register", "tiny", "--type", "pytorch-mar", "--path", str(mar), address)
    assert registered.returncode == 0, registered.stderr

    # TorchServe's own gRPC API, through mesh's front door: routed by model_name, as ModelMesh routes it.
    with grpc.insecure_channel(f"127.0.0.1:{mesh.grpc_port}") as channel:
        request = ts.PredictionsRequest(model_name="tiny", input={"data": json.dumps(X).encode()})
        reply = ts_grpc.InferenceAPIsServiceStub(channel).Predictions(request, timeout=180)
    assert json.loads(reply.prediction) == pytest.approx(Y)
