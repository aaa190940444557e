"""S3 with IAM roles for service accounts (EKS's web identity): no keys in the storage config, a role and a token
file instead (the storage key's, or the AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE that EKS mounts); the puller
takes temporary credentials from STS (moto's, on 127.0.0.1) and pulls with them. Neither the token nor any key
ever shows in an error or a log line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from puller_helpers import MODEL_FILES, SECRET_KEY, S3Store, files_under

from adapters.puller import Puller
from adapters.puller.s3 import S3Clients
from adapters.puller.storage import S3Location, parse_model_key, resolve_location
from mesh.errors import InvalidArgument, MeshError, ModelLoadFailed

ROLE = "arn:aws:iam::123456789012:role/mesh-models-reader"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.mesh-test-web-identity-token.c2lnbmF0dXJl"  # never to be logged
KEY = json.dumps({"storage_key": "eks", "model_type": {"name": "sklearn"}})


def keyless_storage(config_dir: Path, store: S3Store, **extra: str) -> None:
    """A storage key with no access keys: what a cluster using IAM roles for service accounts has."""
    config_dir.mkdir(parents=True, exist_ok=True)
    config = {"type": "s3", "endpoint_url": store.endpoint, "sts_endpoint_url": store.endpoint, "region": "us-east-1"}
    (config_dir / "eks").write_text(json.dumps({**config, "bucket": store.bucket, **extra}))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return path


async def test_the_role_eks_mounts_is_assumed_and_the_model_pulled_with_its_credentials(
    tmp_path: Path, root: Path, s3_store: S3Store, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    keyless_storage(tmp_path / "config", s3_store)
    location = resolve_location("sklearn/mnist", parse_model_key(KEY), tmp_path / "config")
    assert isinstance(location, S3Location)
    assert (location.settings.role_arn, location.settings.web_identity_token_file) == (ROLE, str(token_file))
    # The S3 client signs with temporary credentials from STS: a session token only STS hands out.
    credentials = S3Clients().get(location.settings)._request_signer._credentials.get_frozen_credentials()
    assert credentials.token and credentials.access_key.startswith("ASIA")

    pulled = await Puller(root, tmp_path / "config").pull("mnist", "sklearn/mnist", KEY)
    assert files_under(pulled.path) == MODEL_FILES


async def test_the_storage_keys_own_role_and_token_file_win(
    tmp_path: Path, s3_store: S3Store, token_file: Path
) -> None:
    keyless_storage(tmp_path / "config", s3_store, role_arn=ROLE, web_identity_token_file=str(token_file))
    location = resolve_location("sklearn/mnist", parse_model_key(KEY), tmp_path / "config")
    assert isinstance(location, S3Location) and location.settings.role_arn == ROLE
    keyless_storage(tmp_path / "half", s3_store, role_arn=ROLE)
    with pytest.raises(InvalidArgument, match="web identity without its token file"):
        resolve_location("sklearn/mnist", parse_model_key(KEY), tmp_path / "half")


async def test_a_missing_token_file_is_a_clear_failure(
    tmp_path: Path, root: Path, s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "not-mounted"))
    keyless_storage(tmp_path / "config", s3_store)
    with pytest.raises(ModelLoadFailed, match=r"the web identity token file .*not-mounted could not be read"):
        await Puller(root, tmp_path / "config").pull("mnist", "sklearn/mnist", KEY)


async def test_no_token_or_key_shows_in_errors_or_logs(
    tmp_path: Path, root: Path, s3_store: S3Store, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    closed = "http://127.0.0.1:9"  # nothing listens: every call fails
    failures: list[str] = []
    keyless_storage(tmp_path / "role", s3_store, role_arn=ROLE, web_identity_token_file=str(token_file))
    config = json.loads((tmp_path / "role" / "eks").read_text())
    (tmp_path / "role" / "eks").write_text(json.dumps({**config, "sts_endpoint_url": closed}))
    keyed = {"type": "s3", "endpoint_url": closed, "access_key_id": "AKIAMESHTEST", "secret_access_key": SECRET_KEY}
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "eks").write_text(json.dumps({**keyed, "bucket": s3_store.bucket}))
    for config_dir in (tmp_path / "role", tmp_path / "keys"):
        with pytest.raises(MeshError) as failed:
            await Puller(root, config_dir).pull("mnist", "sklearn/mnist", KEY)
        failures.append(failed.value.message)
    assert all(failures), failures
    for text in (*failures, caplog.text):
        assert TOKEN not in text and SECRET_KEY not in text
