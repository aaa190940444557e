"""Downloads a model from an http(s) URL: a file as it is, or an archive (.tar.gz, .tgz, .tar, .zip) unpacked into a
folder named after it. Blocking, run in the puller's thread.

The same safety as every source: every path written is checked to stay inside the staging folder (an archive
member named `../x` or `/etc/x` is refused), archive links of any kind are refused (a symlink could point
anywhere), the bytes downloaded and unpacked are capped (`max_bytes`), a digest given in the model key is checked
before anything is unpacked, and a failed pull leaves nothing (the staging folder is removed). Credentials in a
URL (user:password@host) are never put in a message.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from adapters.puller.destination import Destination
from adapters.puller.storage import HttpLocation
from mesh.errors import InvalidArgument, ModelLoadFailed, Unavailable

MAX_BYTES = 64 * 1024**3
"""The most a pull may download, or unpack from an archive: a bound on a runaway or hostile source."""
TIMEOUT_S = 60.0
"""Connecting, and each read: a server that stops sending fails the pull instead of holding it."""
CHUNK = 1024 * 1024
ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")


def archive_suffix(name: str) -> str | None:
    """The archive kind a file name says, or None for a plain file."""
    return next((suffix for suffix in ARCHIVES if name.lower().endswith(suffix)), None)


def local_name(location: HttpLocation) -> str:
    """The model's name in its folder: the URL path's last component, less an archive's suffix."""
    name = location.url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    suffix = archive_suffix(name)
    return name[: -len(suffix)] if suffix else name


def download(location: HttpLocation, name: str, destination: Destination, max_bytes: int = MAX_BYTES) -> None:
    suffix = archive_suffix(location.url.split("?", 1)[0].split("#", 1)[0])
    if suffix is None:
        target = destination.path_for(name, f"model path {location}'s file name")
        _fetch(location, target, destination, max_bytes)
        destination.record(target)
        return
    archive = destination.directory.parent / f".{destination.directory.name}{suffix}"
    try:
        _fetch(location, archive, destination, max_bytes)
        destination.folder(name, f"model path {location}'s archive name")
        _unpack(archive, suffix, name, destination, max_bytes, location)
    finally:
        archive.unlink(missing_ok=True)


def _fetch(location: HttpLocation, target: Path, destination: Destination, max_bytes: int) -> None:
    """The URL's body into `target`, bounded, its digest checked when one was given."""
    digest = hashlib.sha256()
    written = 0
    try:
        with urllib.request.urlopen(_request(location.url), timeout=TIMEOUT_S) as response, target.open("wb") as out:
            while chunk := response.read(CHUNK):
                destination.check_stopped()
                written += len(chunk)
                if written > max_bytes:
                    raise ModelLoadFailed(f"{location} is larger than the {max_bytes}-byte limit of a pull")
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ModelLoadFailed(f"nothing at {location} (404 Not Found)") from None
        if exc.code in (401, 403):
            raise ModelLoadFailed(f"{location} answered {exc.code} {exc.reason}: access is not allowed") from None
        raise ModelLoadFailed(f"{location} answered {exc.code} {exc.reason}") from None
    except TimeoutError:
        raise Unavailable(f"{location} did not answer within {TIMEOUT_S:.0f} s") from None
    except urllib.error.URLError as exc:
        raise Unavailable(f"{location} could not be reached: {exc.reason}") from None
    if location.sha256 is not None and digest.hexdigest() != location.sha256:
        raise ModelLoadFailed(f"{location} has sha256 {digest.hexdigest()}, not the {location.sha256} its key gives")


def _request(url: str) -> urllib.request.Request:
    """A GET of the URL; credentials in it (user:password@host) go into a basic Authorization header instead."""
    parts = urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    secret = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    return urllib.request.Request(bare, headers={"Authorization": f"Basic {secret}"})


def _unpack(
    archive: Path, suffix: str, name: str, destination: Destination, max_bytes: int, location: HttpLocation
) -> None:
    unpacked = 0

    def budget(size: int) -> None:
        nonlocal unpacked
        unpacked += size
        if unpacked > max_bytes:
            raise ModelLoadFailed(f"{location} unpacks to more than the {max_bytes}-byte limit of a pull")

    try:
        if suffix == ".zip":
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():
                    member = _member_name(info.filename)
                    if member is None:
                        continue
                    _unpack_member(member, info.is_dir(), _zip_is_link(info), name, destination)
                    budget(info.file_size)
                    if not info.is_dir():
                        with zipped.open(info) as source:
                            _copy(source, destination.path_for(f"{name}/{member}", "archive member"))
        else:
            with tarfile.open(archive, "r:gz" if suffix in (".tar.gz", ".tgz") else "r:") as tar:
                for entry in tar:
                    member = _member_name(entry.name)
                    if member is None:
                        continue
                    is_link = entry.issym() or entry.islnk()
                    if not (is_link or entry.isfile() or entry.isdir()):
                        raise InvalidArgument(f"{location} holds {entry.name!r}, which is not a file or folder")
                    _unpack_member(member, entry.isdir(), is_link, name, destination)
                    budget(entry.size)
                    if entry.isfile():
                        source = tar.extractfile(entry)
                        assert source is not None
                        with source:
                            _copy(source, destination.path_for(f"{name}/{member}", "archive member"))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelLoadFailed(f"{location} is not a readable {suffix} archive: {exc}") from None
    for path in (destination.directory / name).rglob("*"):
        if path.is_file():
            destination.record(path)


def _member_name(raw: str) -> str | None:
    """An archive member's name without the "./" prefixes tar writes; None for the archive's root itself."""
    if raw.startswith("/"):
        raise InvalidArgument(f"archive member {raw!r} is absolute")
    member = raw
    while member.startswith("./"):
        member = member[2:]
    member = member.rstrip("/")
    return None if member in ("", ".") else member


def _unpack_member(member: str, is_dir: bool, is_link: bool, name: str, destination: Destination) -> None:
    """Refuses a link; checks (by asking for its path) that the member stays inside the model's folder."""
    if is_link:
        raise InvalidArgument(f"archive member {member!r} is a link: archives may hold only files and folders")
    if is_dir:
        destination.folder(f"{name}/{member}", f"archive member {member!r}")
    else:
        destination.path_for(f"{name}/{member}", f"archive member {member!r}")


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def _copy(source: object, target: Path) -> None:
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, CHUNK)  # type: ignore[arg-type]
