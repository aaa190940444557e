"""Pulling from http(s) URLs, from a real HTTP server on 127.0.0.1 (the standard library's, in a thread): a file,
archives unpacked (.tar.gz, .zip), a digest checked, and every way it can go wrong said clearly, leaving nothing
behind: not found, forbidden, too large, a corrupt archive, members that would escape, links."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import logging
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from puller_helpers import everything_under, files_under

from adapters.puller import Puller
from mesh.errors import InvalidArgument, ModelLoadFailed

FILES = {"model.pkl": b"weights" * 100, "config/settings.json": b'{"a": 1}'}


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, body in members.items():
            archive.writestr(name, body)
    return buffer.getvalue()


class Site:
    """Paths → (status, body) served on 127.0.0.1; every request's path is recorded."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, bytes]] = {}
        self.requested: list[str] = []
        self.authorizations: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                site.requested.append(self.path)
                site.authorizations.append(self.headers.get("Authorization", ""))
                status, body = site.pages.get(self.path, (404, b"no such page"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    served = Site()
    try:
        yield served
    finally:
        served.close()


async def test_a_file_is_pulled_as_it_is(site: Site, root: Path) -> None:
    site.pages["/models/iris.joblib"] = (200, b"a pickled model")
    pulled = await Puller(root).pull("iris", f"{site.url}/models/iris.joblib")
    assert pulled.path == pulled.directory / "iris.joblib" and pulled.path.read_bytes() == b"a pickled model"
    assert pulled.disk_size_bytes == len(b"a pickled model")


@pytest.mark.parametrize(("suffix", "pack"), [(".tar.gz", tar_gz), (".zip", zipped)])
async def test_an_archive_is_unpacked_into_a_folder_named_after_it(site: Site, root: Path, suffix: str, pack) -> None:  # type: ignore[no-untyped-def]
    site.pages[f"/m/mnist{suffix}"] = (200, pack(FILES))
    pulled = await Puller(root).pull("mnist", f"{site.url}/m/mnist{suffix}")
    assert pulled.path == pulled.directory / "mnist"
    assert files_under(pulled.path) == FILES
    assert pulled.disk_size_bytes == sum(len(b) for b in FILES.values())


async def test_tars_dot_slash_prefixes_are_the_archives_own_folder(site: Site, root: Path) -> None:
    site.pages["/m.tgz"] = (200, tar_gz({f"./{name}": body for name, body in FILES.items()}))
    pulled = await Puller(root).pull("m", f"{site.url}/m.tgz")
    assert files_under(pulled.path) == FILES


async def test_a_digest_in_the_model_key_is_checked(site: Site, root: Path) -> None:
    body = tar_gz(FILES)
    site.pages["/m.tar.gz"] = (200, body)
    good = json.dumps({"storage_params": {"sha256": hashlib.sha256(body).hexdigest()}})
    assert files_under((await Puller(root).pull("m", f"{site.url}/m.tar.gz", good)).path) == FILES
    bad = json.dumps({"storage_params": {"sha256": "0" * 64}})
    with pytest.raises(ModelLoadFailed, match=f"has sha256 {hashlib.sha256(body).hexdigest()}, not the 000"):
        await Puller(root).pull("m2", f"{site.url}/m.tar.gz", bad)
    assert everything_under(root) <= {"m", *everything_under(root / "m")} | {
        f"m/{p}" for p in everything_under(root / "m")
    }


@pytest.mark.parametrize(
    ("status", "message"),
    [(404, r"nothing at http://127\.0\.0\.1:\d+/gone\.joblib \(404 Not Found\)"), (403, "answered 403 .*not allowed")],
)
async def test_http_errors_say_what_happened_and_leave_nothing(
    site: Site, root: Path, status: int, message: str
) -> None:
    site.pages["/gone.joblib"] = (status, b"")
    with pytest.raises(ModelLoadFailed, match=message):
        await Puller(root).pull("gone", f"{site.url}/gone.joblib")
    assert everything_under(root) == set()


async def test_more_than_the_limit_is_refused_downloaded_or_unpacked(site: Site, root: Path) -> None:
    site.pages["/big.bin"] = (200, b"x" * 5000)
    with pytest.raises(ModelLoadFailed, match="larger than the 1000-byte limit"):
        await Puller(root, max_bytes=1000).pull("big", f"{site.url}/big.bin")
    site.pages["/bomb.tar.gz"] = (200, tar_gz({"zeros": b"\0" * 100_000}))  # compresses to a few hundred bytes
    with pytest.raises(ModelLoadFailed, match="unpacks to more than the 1000-byte limit"):
        await Puller(root, max_bytes=1000).pull("bomb", f"{site.url}/bomb.tar.gz")
    assert everything_under(root) == set()


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (tar_gz({"../escaped": b"x"}), "has a '\\.\\.' path component"),
        (tar_gz({"/etc/passwd-copy": b"x"}), "is absolute"),
        (tar_gz({"ok": b"x"}, links={"link": "/etc/passwd"}), "is a link"),
        (b"not an archive at all", "is not a readable .tar.gz archive"),
    ],
)
async def test_hostile_or_broken_archives_are_refused(site: Site, root: Path, archive: bytes, message: str) -> None:
    site.pages["/m.tar.gz"] = (200, archive)
    with pytest.raises((InvalidArgument, ModelLoadFailed), match=message):
        await Puller(root).pull("m", f"{site.url}/m.tar.gz")
    assert everything_under(root) == set()
    assert not (root.parent / "escaped").exists()


async def test_credentials_in_a_url_are_sent_as_basic_auth_and_never_show(
    site: Site, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    site.pages["/private.bin"] = (200, b"private weights")
    url = f"http://user:s3cr3t@{site.url.removeprefix('http://')}"
    pulled = await Puller(root).pull("m", f"{url}/private.bin")
    assert pulled.path.read_bytes() == b"private weights"
    assert site.authorizations == ["Basic " + base64.b64encode(b"user:s3cr3t").decode()]
    with pytest.raises(ModelLoadFailed) as failed:
        await Puller(root).pull("m", f"{url}/missing.bin")
    assert "s3cr3t" not in failed.value.message and "***@127.0.0.1" in failed.value.message
    assert "s3cr3t" not in caplog.text
