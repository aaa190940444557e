"""Downloads from S3 and S3-compatible stores (MinIO, IBM COS, Ceph) with boto3; blocking, run in a thread.

Credentials come only from the storage config: its keys, or a role assumed with a web-identity token (IAM roles for
service accounts: the storage key's role_arn and web_identity_token_file, or the AWS_ROLE_ARN and
AWS_WEB_IDENTITY_TOKEN_FILE that EKS mounts), refreshed before they expire. A key with neither is accessed
unsigned (public buckets), so the puller never falls back to boto3's credential chain (other environment
variables, ~/.aws, instance metadata) by accident. The token and the keys are never logged or put in an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import botocore.session
from boto3.exceptions import Boto3Error, RetriesExceededError
from boto3.s3.transfer import S3Transfer
from botocore import UNSIGNED
from botocore.config import Config
from botocore.credentials import (
    AssumeRoleWithWebIdentityCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)
from botocore.utils import FileWebIdentityTokenLoader

from adapters.puller.destination import Destination
from adapters.puller.storage import S3Location, S3Settings
from mesh.errors import MeshError, ModelLoadFailed, Unavailable

# botocore's DEBUG lines carry each request's parameters and headers (a web-identity token, for one): they are
# never emitted, whatever level the process logs at. Found by test_no_token_or_key_shows_in_errors_or_logs.
for _chatty in ("botocore", "boto3", "s3transfer"):
    logging.getLogger(_chatty).setLevel(max(logging.getLogger(_chatty).level, logging.INFO))

_NOT_FOUND = {"404", "NoSuchKey"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
)


class S3Clients:
    """One boto3 client per distinct S3Settings, created under a lock (boto3 sessions are not thread-safe;
    its clients are)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: boto3.session.Session | None = None
        self._clients: dict[S3Settings, Any] = {}
        self._ca_dir: Path | None = None

    def get(self, settings: S3Settings) -> Any:
        with self._lock:
            client = self._clients.get(settings)
            if client is None:
                client = self._create(settings)
                self._clients[settings] = client
            return client

    def _create(self, settings: S3Settings) -> Any:
        if settings.role_arn is not None:
            return _web_identity_session(settings).client(
                "s3",
                endpoint_url=settings.endpoint_url,
                verify=self._ca_file(settings.certificate) if settings.certificate else None,
                config=_config(settings),
            )
        if self._session is None:
            self._session = boto3.session.Session()
        config = _config(settings)
        return self._session.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            verify=self._ca_file(settings.certificate) if settings.certificate else None,
            config=config,
        )

    def _ca_file(self, certificate: str) -> str:
        """boto3 takes a CA bundle as a file path; the storage config holds the PEM text itself."""
        if self._ca_dir is None:
            self._ca_dir = Path(tempfile.mkdtemp(prefix="mesh-puller-ca-"))
            weakref.finalize(self, shutil.rmtree, self._ca_dir, True)
        path = self._ca_dir / f"{hashlib.sha256(certificate.encode()).hexdigest()[:16]}.pem"
        path.write_text(certificate)
        return str(path)


def _config(settings: S3Settings) -> Config:
    signed = settings.access_key_id is not None or settings.role_arn is not None
    return Config(
        region_name=settings.region,
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=10,
        read_timeout=60,
        # Custom endpoints (MinIO and most on-premise stores) expect path-style URLs.
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
        signature_version=None if signed else UNSIGNED,
    )


class _WebIdentity(CredentialProvider):  # type: ignore[misc]
    """Temporary credentials from STS AssumeRoleWithWebIdentity, fetched when first needed and again before they
    expire (botocore's refreshable credentials), the token read from its file each time (EKS rotates it)."""

    METHOD = "mesh-web-identity"

    def __init__(self, settings: S3Settings, core: botocore.session.Session) -> None:
        def sts(service_name: str, **kwargs: Any) -> Any:
            return core.create_client(
                service_name, region_name=settings.region, endpoint_url=settings.sts_endpoint_url, **kwargs
            )

        assert settings.role_arn is not None and settings.web_identity_token_file is not None
        self._fetcher = AssumeRoleWithWebIdentityCredentialFetcher(
            client_creator=sts,
            web_identity_token_loader=FileWebIdentityTokenLoader(settings.web_identity_token_file),
            role_arn=settings.role_arn,
            extra_args={"RoleSessionName": "mesh-puller"},
        )

    def load(self) -> DeferredRefreshableCredentials:
        return DeferredRefreshableCredentials(refresh_using=self._fetcher.fetch_credentials, method=self.METHOD)


def _web_identity_session(settings: S3Settings) -> boto3.session.Session:
    """A session whose only credentials are the role's, through the web identity (no other source is consulted)."""
    core = botocore.session.Session()
    core.register_component("credential_provider", CredentialResolver([_WebIdentity(settings, core)]))
    return boto3.session.Session(botocore_session=core)


def download(client: Any, location: S3Location, name: str, destination: Destination) -> None:
    """Downloads the folder (every object under `key/`) or, failing that, the single object `key` to `name`.

    A key ending in '/' is only ever a folder. Folder wins over an object of the same name, since a model that
    is a folder is the common case and listing is needed for it anyway.
    """
    prefix = location.key.rstrip("/") + "/"
    # One transfer (and its thread pool) for the whole model; it splits large objects into parallel ranges.
    with _s3_errors(location), S3Transfer(client) as transfer:
        found_folder = False
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found_folder = True
                _download_object(transfer, location, item["Key"], name, prefix, destination)
        if found_folder:
            return
        if location.key.endswith("/"):
            raise _not_found(location)
        try:
            client.head_object(Bucket=location.bucket, Key=location.key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise _not_found(location) from exc
            raise
        target = destination.path_for(name, f"model name {name!r}")
        transfer.download_file(location.bucket, location.key, str(target))
        destination.record(target)


def _download_object(
    transfer: S3Transfer, location: S3Location, object_key: str, name: str, prefix: str, destination: Destination
) -> None:
    relative = object_key[len(prefix) :]
    what = f"S3 object key {object_key!r} in bucket '{location.bucket}'"
    if relative == "":
        return  # the folder's own marker object
    if relative.endswith("/"):
        destination.folder(f"{name}/{relative[:-1]}", what)  # an (empty) folder marker
        return
    target = destination.path_for(f"{name}/{relative}", what)
    transfer.download_file(location.bucket, object_key, str(target))
    destination.record(target)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _not_found(location: S3Location) -> ModelLoadFailed:
    return ModelLoadFailed(f"no object or folder at {location}")


@contextlib.contextmanager
def _s3_errors(location: S3Location) -> Iterator[None]:
    """Turns boto3's errors into mesh's, saying which bucket, key and storage key were involved."""
    endpoint = location.settings.endpoint_url or "AWS S3"
    try:
        yield
    except MeshError:
        raise
    except botocore.exceptions.ClientError as exc:
        code = _code(exc)
        if code == "NoSuchBucket":
            raise ModelLoadFailed(
                f"bucket '{location.bucket}' does not exist at {endpoint}, pulling {location}"
            ) from exc
        if code in _NOT_FOUND:
            raise _not_found(location) from exc
        if code in _DENIED:
            raise ModelLoadFailed(
                f"access denied ({code}) pulling {location} from {endpoint}: check the storage key's credentials"
            ) from exc
        raise ModelLoadFailed(f"S3 error {code or exc} pulling {location} from {endpoint}") from exc
    except (*_UNREACHABLE, RetriesExceededError) as exc:
        raise Unavailable(f"S3 endpoint {endpoint} did not answer pulling {location}: {exc}") from exc
    except OSError as exc:
        token_file = location.settings.web_identity_token_file
        if token_file is None or exc.filename != token_file:
            raise
        raise ModelLoadFailed(
            f"pulling {location}: the web identity token file {token_file} could not be read ({exc.strerror})"
        ) from None
    except (botocore.exceptions.BotoCoreError, Boto3Error) as exc:
        raise ModelLoadFailed(f"pulling {location} from {endpoint} failed: {exc}") from exc
