"""Pulling from Azure Blob Storage against Azurite (Azure's own emulator, from the npm registry, on 127.0.0.1):
a folder, a single blob, a storage key's connection string, a public container read anonymously, the failures,
and no secret in an error or a log line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from harness import azurite
from puller_helpers import MODEL_FILES, SINGLE_FILE, everything_under, files_under

from adapters.puller import Puller
from mesh.errors import InvalidArgument, ModelLoadFailed, Unavailable

pytestmark = pytest.mark.skipif(azurite.missing() is not None, reason=azurite.missing() or "")

PRIVATE, PUBLIC = "models", "public-models"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[azurite.Azurite]:
    server = azurite.Azurite(tmp_path_factory.mktemp("azurite") / "azurite.log")
    try:
        service = BlobServiceClient.from_connection_string(server.connection_string)
        private = service.create_container(PRIVATE)
        public = service.create_container(PUBLIC, public_access="container")
        for container in (private, public):
            for name, body in MODEL_FILES.items():
                container.upload_blob(f"sklearn/mnist/{name}", body)
            container.upload_blob("sklearn/mnist-svm.joblib", SINGLE_FILE)
        yield server
    finally:
        server.stop()


def _storage(folder: Path, **fields: object) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "azure").write_text(json.dumps({"type": "azure", "account_name": azurite.ACCOUNT, **fields}))
    return folder


KEY = json.dumps({"storage_key": "azure"})


async def test_a_folder_and_a_single_blob_are_pulled_with_a_connection_string(
    blobs: azurite.Azurite, root: Path, tmp_path: Path
) -> None:
    config = _storage(tmp_path / "storage", container=PRIVATE, connection_string=blobs.connection_string)
    folder = await Puller(root, config).pull("mnist", "sklearn/mnist", KEY)
    assert folder.path == folder.directory / "mnist" and files_under(folder.path) == MODEL_FILES
    single = await Puller(root, config).pull("svm", "sklearn/mnist-svm.joblib", KEY)
    assert single.path.read_bytes() == SINGLE_FILE


async def test_a_public_container_is_read_without_a_secret(blobs: azurite.Azurite, root: Path, tmp_path: Path) -> None:
    config = _storage(tmp_path / "storage", container=PUBLIC, endpoint_url=blobs.endpoint)
    pulled = await Puller(root, config).pull("mnist", "sklearn/mnist", KEY)
    assert files_under(pulled.path) == MODEL_FILES


async def test_missing_blobs_and_containers_say_so_and_leave_nothing(
    blobs: azurite.Azurite, root: Path, tmp_path: Path
) -> None:
    config = _storage(tmp_path / "storage", container=PRIVATE, connection_string=blobs.connection_string)
    with pytest.raises(ModelLoadFailed, match=r"no object or folder at .*/models/sklearn/nope \(storage key 'azure'\)"):
        await Puller(root, config).pull("nope", "sklearn/nope", KEY)
    absent = _storage(tmp_path / "absent", container="absent", connection_string=blobs.connection_string)
    with pytest.raises(ModelLoadFailed, match="no container 'absent'"):
        await Puller(root, absent).pull("absent", "x", KEY)
    assert everything_under(root) == set()


async def test_a_wrong_key_is_access_denied_and_never_shown(
    blobs: azurite.Azurite, root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "bm90LXRoZS1rZXktYXQtYWxsLXNvcnJ5LW5vdC10aGUta2V5LWF0LWFsbC1zb3JyeS0xMjM0NTY3OA=="
    connection = blobs.connection_string.replace(azurite.ACCOUNT_KEY, wrong)
    config = _storage(tmp_path / "storage", container=PRIVATE, connection_string=connection)
    with pytest.raises(ModelLoadFailed, match="access denied|failed: HTTP 403") as denied:
        await Puller(root, config).pull("mnist", "sklearn/mnist", KEY)
    assert wrong not in str(denied.value) and wrong not in caplog.text
    assert azurite.ACCOUNT_KEY not in caplog.text


async def test_an_account_that_does_not_answer_is_unavailable(root: Path, tmp_path: Path) -> None:
    config = _storage(tmp_path / "storage", container=PUBLIC, endpoint_url="http://127.0.0.1:9/devstoreaccount1")
    with pytest.raises(Unavailable, match="did not answer"):
        await Puller(root, config).pull("m", "sklearn/mnist", KEY)


def test_an_azure_url_names_its_account_and_container() -> None:
    from adapters.puller.storage import AzureLocation, ModelKey, resolve_location

    location = resolve_location("https://acct.blob.core.windows.net/box/models/mnist/", ModelKey(), None)
    assert isinstance(location, AzureLocation)
    assert (location.settings.account_name, location.container, location.key) == ("acct", "box", "models/mnist/")
    assert location.settings.account_url == "https://acct.blob.core.windows.net"
    with pytest.raises(InvalidArgument, match="client_secret without client_id"):
        resolve_location("https://a.blob.core.windows.net/c/k", ModelKey(storage_params={"client_secret": "s"}), None)
