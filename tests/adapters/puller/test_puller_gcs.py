"""Pulling from Google Cloud Storage (gs://) against a real GCS server on 127.0.0.1 (gcp-storage-emulator, in a
thread), with google-cloud-storage as the puller uses it: a folder, a single object, a storage key naming the
bucket, a service account's key (its token fetched from a local token endpoint, never shown), and the failures."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from puller_helpers import MODEL_FILES, SINGLE_FILE, everything_under, files_under

from adapters.puller import Puller
from mesh.errors import InvalidArgument, ModelLoadFailed, Unavailable

BUCKET = "models"


class Gcs:
    def __init__(self) -> None:
        self.server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server._api._httpd.server_address[1]}"  # type: ignore[attr-defined]
        options = {"api_endpoint": self.url}
        client = storage.Client(project="test", credentials=AnonymousCredentials(), client_options=options)
        bucket = client.bucket(BUCKET)
        for name, body in MODEL_FILES.items():
            bucket.blob(f"sklearn/mnist/{name}").upload_from_string(body)
        bucket.blob("sklearn/mnist-svm.joblib").upload_from_string(SINGLE_FILE)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def gcs() -> Iterator[Gcs]:
    server = Gcs()
    try:
        yield server
    finally:
        server.stop()


def _config(folder: Path, name: str, **fields: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps({"type": "gcs", **fields}))
    return folder


async def test_a_folder_and_a_single_object_are_pulled(gcs: Gcs, root: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "storage", "gcs", endpoint_url=gcs.url)
    key = json.dumps({"storage_key": "gcs"})
    folder = await Puller(root, config).pull("mnist", f"gs://{BUCKET}/sklearn/mnist", key)
    assert folder.path == folder.directory / "mnist" and files_under(folder.path) == MODEL_FILES
    assert folder.disk_size_bytes == sum(len(b) for b in MODEL_FILES.values())
    single = await Puller(root, config).pull("svm", f"gs://{BUCKET}/sklearn/mnist-svm.joblib", key)
    assert single.path.read_bytes() == SINGLE_FILE


async def test_a_plain_path_takes_its_bucket_from_the_storage_key(gcs: Gcs, root: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "storage", "default", endpoint_url=gcs.url, bucket=BUCKET)
    pulled = await Puller(root, config).pull("mnist", "sklearn/mnist")
    assert files_under(pulled.path) == MODEL_FILES


async def test_missing_objects_and_buckets_say_so_and_leave_nothing(gcs: Gcs, root: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "storage", "gcs", endpoint_url=gcs.url)
    key = json.dumps({"storage_key": "gcs"})
    with pytest.raises(ModelLoadFailed, match=r"no object or folder at gs://models/sklearn/nope \(storage key 'gcs'\)"):
        await Puller(root, config).pull("nope", f"gs://{BUCKET}/sklearn/nope", key)
    with pytest.raises(ModelLoadFailed, match="no bucket 'absent' or object at gs://absent/x"):
        await Puller(root, config).pull("absent", "gs://absent/x", key)
    assert everything_under(root) == set()


async def test_an_endpoint_that_does_not_answer_is_unavailable(root: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "storage", "gcs", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(Unavailable, match="did not answer"):
        await Puller(root, config).pull("m", f"gs://{BUCKET}/sklearn/mnist", json.dumps({"storage_key": "gcs"}))


class TokenEndpoint:
    """An OAuth token endpoint on 127.0.0.1: records each grant (a JWT signed with the service account's key)."""

    def __init__(self) -> None:
        self.grants: list[dict[str, list[str]]] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the standard library's name
                length = int(self.headers.get("Content-Length", "0"))
                endpoint.grants.append(urllib.parse.parse_qs(self.rfile.read(length).decode()))
                body = json.dumps({"access_token": "ya29.test-token", "expires_in": 3600, "token_type": "Bearer"})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def test_a_service_account_key_is_used_and_never_shown(
    gcs: Gcs, root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    private_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    tokens = TokenEndpoint()
    try:
        config = _config(
            tmp_path / "storage", "gcs", endpoint_url=gcs.url, client_email="puller@mesh.iam.example",
            private_key=private_key, token_uri=tokens.url,
        )  # fmt: skip
        key = json.dumps({"storage_key": "gcs"})
        pulled = await Puller(root, config).pull("mnist", f"gs://{BUCKET}/sklearn/mnist", key)
        assert files_under(pulled.path) == MODEL_FILES
        assert tokens.grants and tokens.grants[0]["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        with pytest.raises(ModelLoadFailed) as failed:
            await Puller(root, config).pull("nope", f"gs://{BUCKET}/nope", key)
    finally:
        tokens.server.shutdown()
    secret = private_key.splitlines()[1]
    assert secret not in str(failed.value) and secret not in caplog.text


async def test_half_a_service_account_is_refused() -> None:
    from adapters.puller.storage import ModelKey, resolve_location

    with pytest.raises(InvalidArgument, match="only one of client_email and private_key"):
        resolve_location("gs://b/k", ModelKey(storage_params={"type": "gcs", "client_email": "a@b"}), None)
