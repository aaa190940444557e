"""Pulling from Azure Blob Storage against Azurite (Azure's own emulator, from the npm registry, on 127.0.0.1):
a folder, a single blob, a storage key's connection string, a public container read anonymously, the failures,
and no secret in an error or a log line. And without static keys: a service principal, AKS workload identity and
a managed identity, each signing in at Microsoft Entra's endpoints as served on 127.0.0.1 (tests/harness/entra.py)
for a token that Azurite, over HTTPS with OAuth on, takes."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from harness import azurite
from harness.entra import EntraService, Identity
from harness.tls_certs import CertificateAuthority
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


@dataclass
class OAuthStore:
    blobs: azurite.Azurite  # over HTTPS, taking bearer tokens
    entra: EntraService
    ca: Path  # what both certificates are signed by


@pytest.fixture(scope="module")
def oauth_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthStore]:
    folder = tmp_path_factory.mktemp("azure-oauth")
    authority = CertificateAuthority(folder / "certs")
    issued = authority.issue("127.0.0.1", client=False)
    server = azurite.Azurite(folder / "azurite.log", tls=(issued.cert, issued.key))
    entra = EntraService(Identity(), issued.cert, issued.key)
    try:
        trusted = str(authority.ca)
        service = BlobServiceClient.from_connection_string(server.connection_string, connection_verify=trusted)
        container = service.create_container(PRIVATE)
        for name, body in MODEL_FILES.items():
            container.upload_blob(f"sklearn/mnist/{name}", body)
        yield OAuthStore(server, entra, authority.ca)
    finally:
        entra.stop()
        server.stop()


@pytest.fixture
def signed_in(oauth_store: OAuthStore, monkeypatch: pytest.MonkeyPatch) -> OAuthStore:
    """No Azure setting of the machine's reaches the test; the certificates' CA is trusted; no grant yet."""
    for name in [n for n in os.environ if n.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_store.ca))
    oauth_store.entra.grants.clear()
    return oauth_store


async def test_a_service_principal_signs_in_at_its_authority_and_its_secret_is_never_shown(
    signed_in: OAuthStore, root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    identity = signed_in.entra.identity
    principal = {"container": PRIVATE, "endpoint_url": signed_in.blobs.endpoint, "client_id": identity.client_id,
                 "tenant_id": identity.tenant_id, "authority_host": signed_in.entra.authority}  # fmt: skip
    config = _storage(tmp_path / "storage", **principal, client_secret=identity.client_secret)
    pulled = await Puller(root, config).pull("mnist", "sklearn/mnist", KEY)
    assert files_under(pulled.path) == MODEL_FILES
    assert signed_in.entra.grants == ["client_secret"]

    wrong = _storage(tmp_path / "wrong", **principal, client_secret="not-the-secret-at-all")
    with pytest.raises(ModelLoadFailed, match="access denied pulling .*: check the storage key's credentials") as no:
        await Puller(root, wrong).pull("again", "sklearn/mnist", KEY)
    for secret in (identity.client_secret, "not-the-secret-at-all"):
        assert secret not in str(no.value) and secret not in caplog.text
    assert signed_in.entra.grants == ["client_secret"]  # the wrong one got no token


async def test_an_aks_workload_identity_signs_in_with_its_federated_token(
    signed_in: OAuthStore, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What AKS injects into a pod whose service account has a workload identity: no secret in the storage key."""
    caplog.set_level(logging.DEBUG)
    identity = signed_in.entra.identity
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(identity.federated_token)
    monkeypatch.setenv("AZURE_CLIENT_ID", identity.client_id)
    monkeypatch.setenv("AZURE_TENANT_ID", identity.tenant_id)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", signed_in.entra.authority)
    config = _storage(tmp_path / "storage", container=PRIVATE, endpoint_url=signed_in.blobs.endpoint)
    pulled = await Puller(root, config).pull("mnist", "sklearn/mnist", KEY)
    assert files_under(pulled.path) == MODEL_FILES
    assert signed_in.entra.grants == ["client_assertion"]
    assert identity.federated_token not in caplog.text


async def test_a_managed_identity_gets_its_token_from_the_hosts_identity_endpoint(
    signed_in: OAuthStore, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A user-assigned managed identity (its client_id in the storage key), through the identity endpoint the host
    provides (App Service's IDENTITY_ENDPOINT and IDENTITY_HEADER; on a VM it is IMDS, which tests cannot reach)."""
    caplog.set_level(logging.DEBUG)
    identity = signed_in.entra.identity
    monkeypatch.setenv("IDENTITY_ENDPOINT", signed_in.entra.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", identity.identity_header)
    managed = {"container": PRIVATE, "endpoint_url": signed_in.blobs.endpoint, "use_managed_identity": True}
    config = _storage(tmp_path / "storage", **managed, client_id=identity.client_id)
    pulled = await Puller(root, config).pull("mnist", "sklearn/mnist", KEY)
    assert files_under(pulled.path) == MODEL_FILES
    assert signed_in.entra.grants == ["managed_identity"]
    assert identity.identity_header not in caplog.text

    other = _storage(tmp_path / "other", **managed, client_id="00000000-0000-0000-0000-000000000000")
    with pytest.raises(ModelLoadFailed, match="access denied pulling"):
        await Puller(root, other).pull("other", "sklearn/mnist", KEY)


def test_an_azure_url_names_its_account_and_container() -> None:
    from adapters.puller.storage import AzureLocation, ModelKey, resolve_location

    location = resolve_location("https://acct.blob.core.windows.net/box/models/mnist/", ModelKey(), None)
    assert isinstance(location, AzureLocation)
    assert (location.settings.account_name, location.container, location.key) == ("acct", "box", "models/mnist/")
    assert location.settings.account_url == "https://acct.blob.core.windows.net"
    with pytest.raises(InvalidArgument, match="client_secret without client_id"):
        resolve_location("https://a.blob.core.windows.net/c/k", ModelKey(storage_params={"client_secret": "s"}), None)
