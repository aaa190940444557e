"""Downloads from Azure Blob Storage with azure-storage-blob; blocking, run in a thread.

Credentials, from the storage config as ModelMesh's puller reads them, first match wins: a `connection_string`; a
service principal (`client_id`, `client_secret`, `tenant_id`); with no secret at all, AKS workload identity when
the pod has it (AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE, which AKS injects), or a managed
identity when the storage key says `use_managed_identity` (with its `client_id` for a user-assigned one); else the
container is read anonymously (public access). A service principal and a workload identity sign in at the storage
key's `authority_host` (a sovereign or private cloud), else AZURE_AUTHORITY_HOST, else the public cloud. Never the
machine's other credentials by accident, and no secret or token in a log line or an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import azure.core.exceptions as azexc
from azure.storage.blob import BlobServiceClient, ContainerClient

from adapters.puller.destination import Destination
from adapters.puller.objects import download_tree
from adapters.puller.storage import AzureLocation, AzureSettings
from mesh.errors import MeshError, ModelLoadFailed, Unavailable

# azure-core logs each request's headers at INFO (and bodies at DEBUG): never, whatever level the process logs at.
for _chatty in ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity"):
    logging.getLogger(_chatty).setLevel(max(logging.getLogger(_chatty).level, logging.WARNING))

CALL_TIMEOUT_S = 30
WORKLOAD_IDENTITY_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE")


def credential_for(settings: AzureSettings) -> Any:
    """The credential a storage key's settings give (None: anonymous; a connection string carries its own)."""
    from azure import identity  # imported here: msal is slow to import and most pulls are not from Azure

    if settings.client_id and settings.client_secret and settings.tenant_id:
        return identity.ClientSecretCredential(
            settings.tenant_id, settings.client_id, settings.client_secret, **_authority(settings)
        )
    if all(os.environ.get(name) for name in WORKLOAD_IDENTITY_ENV):
        return identity.WorkloadIdentityCredential(**_authority(settings))
    if settings.use_managed_identity:
        return identity.ManagedIdentityCredential(client_id=settings.client_id)
    return None


def _authority(settings: AzureSettings) -> dict[str, Any]:
    """Where Microsoft Entra signs in: the storage key's authority_host, else AZURE_AUTHORITY_HOST, else the public
    cloud's. MSAL checks a host it does not know with login.microsoftonline.com, which a private cloud cannot
    answer for: for such a host that check is off (it is the operator's own setting, as trusted as the key)."""
    from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS

    host = settings.authority_host or os.environ.get("AZURE_AUTHORITY_HOST")
    if not host:
        return {}
    known = urlsplit(host if "://" in host else f"https://{host}").hostname in WELL_KNOWN_AUTHORITY_HOSTS
    return {"authority": host, "disable_instance_discovery": not known}


def container_client(location: AzureLocation) -> ContainerClient:
    settings = location.settings
    options = {"connection_timeout": CALL_TIMEOUT_S, "read_timeout": CALL_TIMEOUT_S, "retry_total": 0}
    if settings.connection_string:
        service = BlobServiceClient.from_connection_string(settings.connection_string, **options)
    else:
        service = BlobServiceClient(settings.account_url, credential=credential_for(settings), **options)
    return service.get_container_client(location.container)


class _Container:
    def __init__(self, client: ContainerClient) -> None:
        self._client = client

    def names(self, prefix: str) -> Iterable[str]:
        return (blob.name for blob in self._client.list_blobs(name_starts_with=prefix))

    def exists(self, name: str) -> bool:
        return bool(self._client.get_blob_client(name).exists())

    def fetch(self, name: str, target: Path) -> None:
        with target.open("wb") as out:
            self._client.download_blob(name).readinto(out)


def download(location: AzureLocation, name: str, destination: Destination) -> None:
    with _azure_errors(location):
        download_tree(_Container(container_client(location)), location.key, name, destination, str(location))


@contextlib.contextmanager
def _azure_errors(location: AzureLocation) -> Iterator[None]:
    try:
        yield
    except MeshError:
        raise
    except azexc.ResourceNotFoundError as exc:
        code = getattr(exc, "error_code", None) or "not found"
        raise ModelLoadFailed(f"no container '{location.container}' or blob at {location} ({code})") from None
    except azexc.ClientAuthenticationError as exc:
        raise ModelLoadFailed(
            f"access denied pulling {location}: check the storage key's credentials ({type(exc).__name__})"
        ) from None
    except azexc.HttpResponseError as exc:
        raise ModelLoadFailed(f"pulling {location} failed: HTTP {exc.status_code} {exc.reason}") from None
    except (azexc.ServiceRequestError, azexc.ServiceResponseError) as exc:
        raise Unavailable(f"Azure Blob Storage did not answer pulling {location}: {type(exc).__name__}") from None
    except ValueError:  # a malformed connection string (its text may hold a key: not repeated)
        raise ModelLoadFailed(f"pulling {location}: the storage key's connection string is not valid") from None
