"""Where a model's files come from: the ModelMesh modelKey, KServe's storage-config folder, and the decision
between a local path and an S3 location.

The storage config is KServe's `storage-config` secret mounted as a folder: one file per storage key, each a JSON
object such as {"type": "s3", "access_key_id": ..., "secret_access_key": ..., "endpoint_url": ..., "bucket": ...,
"region": ..., "certificate": ...}. It is read on every pull, so a rotated secret takes effect without a restart.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from adapters.puller.names import check_characters, relative_parts
from mesh.errors import InvalidArgument

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DEFAULT_KEY = "default"
_DEFAULT_REGION = "us-east-1"
AZURE_BLOB_HOST = ".blob.core.windows.net"


@dataclass(frozen=True)
class ModelKey:
    """The fields of ModelMesh's modelKey JSON that the adapters read: where the puller finds the files, and what
    the server makes of them."""

    storage_key: str | None = None
    storage_params: dict[str, str] = field(default_factory=dict)
    bucket: str | None = None  # deprecated upstream in favour of storage_params["bucket"], still honoured
    model_type: str | None = None
    predictor: str | None = None  # mesh's own: the model a KServe transformer's predict calls through the router


@dataclass(frozen=True)
class S3Settings:
    """How to reach one S3 endpoint; hashable, so clients can be reused per distinct setting."""

    storage_key: str
    endpoint_url: str | None
    region: str
    access_key_id: str | None
    secret_access_key: str | None = field(repr=False)
    certificate: str | None = field(repr=False)
    # IAM roles for service accounts (EKS): a role assumed with the web-identity token in this file, through STS
    # (at sts_endpoint_url when set). No keys at all: the token file's contents are read when credentials are due.
    role_arn: str | None = None
    web_identity_token_file: str | None = None
    sts_endpoint_url: str | None = None


@dataclass(frozen=True)
class S3Location:
    settings: S3Settings
    bucket: str
    key: str  # an object key or a prefix ("folder"); never empty, no '.' or '..' components

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key} (storage key '{self.settings.storage_key}')"


@dataclass(frozen=True)
class GcsSettings:
    """How to reach Google Cloud Storage: a service account's email and key (both or neither: anonymous)."""

    storage_key: str
    endpoint_url: str | None
    client_email: str | None
    private_key: str | None = field(repr=False)
    token_uri: str | None = None


@dataclass(frozen=True)
class GcsLocation:
    settings: GcsSettings
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.key} (storage key '{self.settings.storage_key}')"


@dataclass(frozen=True)
class AzureSettings:
    """How to reach one Azure storage account's blobs: a connection string, a service principal, or no secret
    (AKS workload identity or a managed identity when the pod has one, else anonymous: azure_blob.py)."""

    storage_key: str
    account_name: str
    connection_string: str | None = field(repr=False)
    client_id: str | None = None
    client_secret: str | None = field(repr=False, default=None)
    tenant_id: str | None = None
    endpoint_url: str | None = None
    """The account's blob endpoint when not https://<account>.blob.core.windows.net (a private endpoint)."""
    use_managed_identity: bool = False
    authority_host: str | None = None
    """Microsoft Entra's sign-in host for a service principal or workload identity, when not the public cloud's
    (a sovereign or private cloud, Azure Stack); else AZURE_AUTHORITY_HOST, else the public cloud's."""

    @property
    def account_url(self) -> str:
        return self.endpoint_url or f"https://{self.account_name}{AZURE_BLOB_HOST}"


@dataclass(frozen=True)
class AzureLocation:
    settings: AzureSettings
    container: str
    key: str

    def __str__(self) -> str:
        return f"{self.settings.account_url}/{self.container}/{self.key} (storage key '{self.settings.storage_key}')"


@dataclass(frozen=True)
class LocalLocation:
    path: str  # as given, without any file:// prefix

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class HttpLocation:
    """A model file, or an archive of one (.tar.gz, .tgz, .tar, .zip: unpacked), at an http(s) URL."""

    url: str
    sha256: str | None = None  # the file's (the archive's) digest, when the model key gives one: checked

    def __str__(self) -> str:
        return redacted(self.url)


def redacted(url: str) -> str:
    """The URL without credentials in it (user:password@host), for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


Location = S3Location | GcsLocation | AzureLocation | LocalLocation | HttpLocation


def parse_model_key(text: str) -> ModelKey:
    """Parses the modelKey JSON ('' means no key); unknown fields are ignored, as upstream does."""
    if not text.strip():
        return ModelKey()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"model key is not valid JSON ({exc}): {text!r}") from exc
    if not isinstance(raw, dict):
        raise InvalidArgument(f"model key must be a JSON object, got {text!r}")
    params = raw.get("storage_params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise InvalidArgument(f"model key's storage_params must be an object of strings, got {params!r}")
    storage_key = raw.get("storage_key")
    bucket = raw.get("bucket") or None
    if storage_key is not None and not isinstance(storage_key, str):
        raise InvalidArgument(f"model key's storage_key must be a string, got {storage_key!r}")
    if bucket is not None and not isinstance(bucket, str):
        raise InvalidArgument(f"model key's bucket must be a string, got {bucket!r}")
    predictor = raw.get("predictor") or None
    if predictor is not None and not isinstance(predictor, str):
        raise InvalidArgument(f"model key's predictor must be a model id (a string), got {predictor!r}")
    return ModelKey(storage_key, dict(params), bucket, _model_type_name(raw.get("model_type")), predictor)


def _model_type_name(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value["name"]
    return value if isinstance(value, str) else None


def resolve_location(model_path: str, key: ModelKey, config_dir: Path | None) -> Location:
    """Decides where `model_path` lives.

    s3:// is S3 and file:// is local. A plain path is S3 when the model key or a default storage key gives a
    storage type (the upstream behaviour), and local otherwise.
    """
    check_characters(model_path, f"model path {model_path!r}")
    scheme_match = _SCHEME.match(model_path)
    scheme = scheme_match.group(1).lower() if scheme_match else None
    if scheme == "file":
        return LocalLocation(model_path[len("file://") :])
    if scheme in ("http", "https"):
        host = urlsplit(model_path).hostname or ""
        if host.endswith(AZURE_BLOB_HOST):
            return _azure_url_location(model_path, host, key, config_dir)
        return _http_location(model_path, key)
    if scheme not in (None, "s3", "gs"):
        raise InvalidArgument(
            f"model path {redacted(model_path)!r} has the unsupported scheme '{scheme}' (use s3://, gs://, "
            "http(s):// or file://)"
        )
    storage_key, config = _storage_config(key, config_dir)
    config.update({"bucket": key.bucket} if key.bucket else {})
    config.update(key.storage_params)
    storage_type = config.get("type") or {"s3": "s3", "gs": "gcs"}.get(scheme or "")
    if storage_type is None:
        return LocalLocation(model_path)
    if storage_type == "azure" and scheme is None:
        container = _optional_str(config, "container", storage_key) or ""
        return _azure_location(storage_key, config, None, container, model_path.lstrip("/"), model_path)
    if storage_type not in ("s3", "gcs") or (scheme is not None and storage_type != {"s3": "s3", "gs": "gcs"}[scheme]):
        raise InvalidArgument(
            f"storage type '{storage_type}' (storage key '{storage_key}') does not pull {redacted(model_path)!r}:"
            " mesh pulls s3, gcs and azure storage keys, http(s) URLs and local paths"
        )
    if scheme is not None:
        bucket, _, object_key = model_path[len(scheme) + len("://") :].partition("/")
    else:
        bucket, object_key = config.get("bucket") or config.get("default_bucket") or "", model_path.lstrip("/")
    if storage_type == "gcs":
        return _gcs_location(storage_key, config, bucket, object_key, model_path)
    return _s3_location(storage_key, config, bucket, object_key, model_path)


def _azure_url_location(url: str, host: str, key: ModelKey, config_dir: Path | None) -> AzureLocation:
    """https://<account>.blob.core.windows.net/<container>/<path>, with the storage key's credentials (if any)."""
    storage_key, config = _storage_config(key, config_dir, "azure")
    config.update(key.storage_params)
    if config.get("type", "azure") != "azure":
        raise InvalidArgument(f"storage key '{storage_key}' is of type '{config['type']}', not azure, for {url!r}")
    container, _, blob = urlsplit(url).path.lstrip("/").partition("/")
    return _azure_location(storage_key, config, host.removesuffix(AZURE_BLOB_HOST), container, blob, url)


def _azure_location(
    storage_key: str, config: dict[str, Any], account: str | None, container: str, blob: str, model_path: str
) -> AzureLocation:
    account = account or _optional_str(config, "account_name", storage_key)
    if not account or not container:
        raise InvalidArgument(
            f"model path {model_path!r}: Azure needs an account and a container (in the URL, or the storage key's "
            "account_name and container)"
        )
    check_characters(container, f"container {container!r}")
    if not blob:
        raise InvalidArgument(f"model path {model_path!r} names a container but no blob or folder in it")
    relative_parts(blob, f"blob name {blob!r} of model path {model_path!r}", allow_trailing_slash=True)
    secret_parts = [_optional_str(config, f, storage_key) for f in ("client_id", "client_secret", "tenant_id")]
    client_id, client_secret, tenant_id = secret_parts
    if client_secret is not None and (client_id is None or tenant_id is None):
        raise InvalidArgument(f"storage key '{storage_key}' has a client_secret without client_id and tenant_id")
    settings = AzureSettings(
        storage_key,
        account,
        _optional_str(config, "connection_string", storage_key),
        client_id,
        client_secret,
        tenant_id,
        _optional_str(config, "endpoint_url", storage_key),
        config.get("use_managed_identity") in (True, "true"),
        _optional_str(config, "authority_host", storage_key),
    )
    return AzureLocation(settings, container, blob)


def _http_location(url: str, key: ModelKey) -> HttpLocation:
    if not urlsplit(url).hostname:
        raise InvalidArgument(f"model path {redacted(url)!r} names no host")
    digest = key.storage_params.get("sha256")
    if digest is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise InvalidArgument(f"storage_params.sha256 must be 64 hexadecimal digits, not {digest!r}")
    return HttpLocation(url, digest.lower() if digest else None)


def _storage_config(key: ModelKey, config_dir: Path | None, kind: str = "") -> tuple[str, dict[str, Any]]:
    """The storage key used and a copy of its config; {} when no key was asked for and no default exists. `kind`:
    the storage type the path implies, whose default key (default_<kind>) is looked up."""
    if key.storage_key is not None:
        config = _read_storage_key(config_dir, key.storage_key)
        if config is None:
            where = f"the storage config ({config_dir})" if config_dir else "a storage config (none is configured)"
            raise InvalidArgument(f"storage key '{key.storage_key}' is not in {where}")
        return key.storage_key, config
    storage_type = key.storage_params.get("type") or kind or None
    # Upstream looks up "default", or "default_<type>" when the params name a type; "default_s3" also serves a
    # model with no type at all, since s3 is the only remote type mesh pulls from.
    candidates = [f"{_DEFAULT_KEY}_{storage_type}"] if storage_type else [_DEFAULT_KEY, f"{_DEFAULT_KEY}_s3"]
    for candidate in candidates:
        if (config := _read_storage_key(config_dir, candidate)) is not None:
            return candidate, config
    return "(none)", {}


def _read_storage_key(config_dir: Path | None, storage_key: str) -> dict[str, Any] | None:
    """One storage key's JSON object, or None when the config or the key's file is absent."""
    check_characters(storage_key, f"storage key {storage_key!r}")
    if not storage_key or "/" in storage_key or storage_key.startswith("."):
        # Only a plain file name: a mounted secret's '..data' and timestamped folders are its internals.
        raise InvalidArgument(f"storage key {storage_key!r} is not a plain name")
    if config_dir is None:
        return None
    path = config_dir / storage_key
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"storage key '{storage_key}' ({path}) is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidArgument(f"storage key '{storage_key}' ({path}) must hold a JSON object")
    return config


def _bucket_and_key(storage_key: str, bucket: str, object_key: str, model_path: str) -> None:
    """Raise InvalidArgument unless the path names a bucket and an object (or folder) whose key cannot climb out."""
    if not bucket:
        raise InvalidArgument(
            f"no bucket for model path {model_path!r}: use s3://bucket/... (or gs://), or set a bucket in storage key "
            f"'{storage_key}' or the model key's storage_params"
        )
    check_characters(bucket, f"bucket {bucket!r}")
    if not object_key:
        raise InvalidArgument(f"model path {model_path!r} names a bucket but no object or folder in it")
    relative_parts(object_key, f"object key {object_key!r} of model path {model_path!r}", allow_trailing_slash=True)


def _gcs_location(
    storage_key: str, config: dict[str, Any], bucket: str, object_key: str, model_path: str
) -> GcsLocation:
    _bucket_and_key(storage_key, bucket, object_key, model_path)
    client_email = _optional_str(config, "client_email", storage_key)
    private_key = _optional_str(config, "private_key", storage_key)
    if (client_email is None) != (private_key is None):
        raise InvalidArgument(f"storage key '{storage_key}' sets only one of client_email and private_key")
    settings = GcsSettings(
        storage_key,
        _optional_str(config, "endpoint_url", storage_key),
        client_email,
        private_key,
        _optional_str(config, "token_uri", storage_key),
    )
    return GcsLocation(settings, bucket, object_key)


def _s3_location(storage_key: str, config: dict[str, Any], bucket: str, object_key: str, model_path: str) -> S3Location:
    _bucket_and_key(storage_key, bucket, object_key, model_path)
    access_key_id = _optional_str(config, "access_key_id", storage_key)
    secret_access_key = _optional_str(config, "secret_access_key", storage_key)
    if (access_key_id is None) != (secret_access_key is None):
        raise InvalidArgument(f"storage key '{storage_key}' sets only one of access_key_id and secret_access_key")
    role_arn, token_file = _web_identity(config, storage_key) if access_key_id is None else (None, None)
    settings = S3Settings(
        storage_key=storage_key,
        endpoint_url=_optional_str(config, "endpoint_url", storage_key),
        region=_optional_str(config, "region", storage_key) or _DEFAULT_REGION,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        certificate=_optional_str(config, "certificate", storage_key),
        role_arn=role_arn,
        web_identity_token_file=token_file,
        sts_endpoint_url=_optional_str(config, "sts_endpoint_url", storage_key),
    )
    return S3Location(settings, bucket, object_key)


def _web_identity(config: dict[str, Any], storage_key: str) -> tuple[str | None, str | None]:
    """The role to assume with a web-identity token, and the token's file: the storage key's `role_arn` and
    `web_identity_token_file`, else what EKS mounts for a pod's service account (AWS_ROLE_ARN,
    AWS_WEB_IDENTITY_TOKEN_FILE). Neither: (None, None), and the bucket is read unsigned."""
    role_arn = _optional_str(config, "role_arn", storage_key) or os.environ.get("AWS_ROLE_ARN") or None
    token_file = (
        _optional_str(config, "web_identity_token_file", storage_key)
        or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        or None
    )
    if (role_arn is None) != (token_file is None):
        raise InvalidArgument(
            f"storage key '{storage_key}' has a web identity without its "
            f"{'token file' if token_file is None else 'role'}: set both role_arn and web_identity_token_file "
            "(or AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE)"
        )
    return role_arn, token_file


def _optional_str(config: dict[str, Any], name: str, storage_key: str) -> str | None:
    value = config.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"storage key '{storage_key}': '{name}' must be a string, got {type(value).__name__}")
    return value
