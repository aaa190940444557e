"""Downloads from Google Cloud Storage (gs://bucket/key) with google-cloud-storage; blocking, run in a thread.

Credentials come only from the storage config, as ModelMesh's puller reads them: a service account's
`client_email` and `private_key` (and `token_uri`), else the bucket is read anonymously (public buckets), so the
puller never falls back to the machine's default credentials by accident. `endpoint_url` points it at another
server (an emulator, a private endpoint). The key is never logged or put in an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import google.api_core.exceptions as gexc
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from adapters.puller.destination import Destination
from adapters.puller.objects import download_tree
from adapters.puller.storage import GcsLocation, GcsSettings
from mesh.errors import MeshError, ModelLoadFailed, Unavailable

CALL_TIMEOUT_S = 30.0
PROJECT = "mesh-puller"  # listing and reading objects needs no real project; the client insists on one


def client_for(settings: GcsSettings) -> storage.Client:
    options = {"api_endpoint": settings.endpoint_url} if settings.endpoint_url else None
    if settings.client_email and settings.private_key:
        info = {
            "type": "service_account",
            "client_email": settings.client_email,
            "private_key": settings.private_key,
            "token_uri": settings.token_uri or "https://oauth2.googleapis.com/token",
        }
        credentials: Any = service_account.Credentials.from_service_account_info(info)
    else:
        credentials = AnonymousCredentials()
    return storage.Client(project=PROJECT, credentials=credentials, client_options=options)


class _Bucket:
    def __init__(self, client: storage.Client, bucket: str) -> None:
        self._bucket = client.bucket(bucket)
        self._client = client

    # No retries of the client's own (they last minutes against a store that is down): a failed pull fails the
    # load, and the router tries the load again later.
    def names(self, prefix: str) -> Iterable[str]:
        blobs = self._client.list_blobs(self._bucket, prefix=prefix, retry=None, timeout=CALL_TIMEOUT_S)
        return (blob.name for blob in blobs)

    def exists(self, name: str) -> bool:
        return bool(self._bucket.blob(name).exists(retry=None, timeout=CALL_TIMEOUT_S))

    def fetch(self, name: str, target: Path) -> None:
        self._bucket.blob(name).download_to_filename(str(target), retry=None, timeout=CALL_TIMEOUT_S)


def download(location: GcsLocation, name: str, destination: Destination) -> None:
    with _gcs_errors(location):
        bucket = _Bucket(client_for(location.settings), location.bucket)
        download_tree(bucket, location.key, name, destination, str(location))


@contextlib.contextmanager
def _gcs_errors(location: GcsLocation) -> Iterator[None]:
    """google-cloud-storage's errors as mesh's, naming the bucket, key and storage key."""
    endpoint = location.settings.endpoint_url or "Google Cloud Storage"
    try:
        yield
    except MeshError:
        raise
    except gexc.NotFound as exc:
        raise ModelLoadFailed(f"no bucket '{location.bucket}' or object at {location} ({endpoint})") from exc
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        raise ModelLoadFailed(
            f"access denied pulling {location} from {endpoint}: check the storage key's service account"
        ) from exc
    except (requests.ConnectionError, requests.Timeout, gexc.ServiceUnavailable, gexc.RetryError) as exc:
        raise Unavailable(f"{endpoint} did not answer pulling {location}: {type(exc).__name__}") from exc
    except gexc.GoogleAPIError as exc:
        raise ModelLoadFailed(f"pulling {location} from {endpoint} failed: {type(exc).__name__}: {exc}") from exc
