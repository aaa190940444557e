"""Names that become paths: model ids as folder names, and object keys or file names as relative paths.

Everything a pull writes is named by something a client or a bucket chose, so each name is checked here before
it touches the filesystem; a name that could climb out of its folder is refused, never cleaned up.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import quote

from mesh.errors import InvalidArgument

# Leaves room under NAME_MAX (255 bytes on common filesystems) for the hash suffix.
_MAX_DIR_NAME = 200
_KEEP_ON_HASH = 150


def model_dir_name(model_id: str) -> str:
    """A single, safe folder name for a model id, distinct for distinct ids.

    Percent-encoding keeps the name readable and makes '/', '..' and control characters inert; a leading '.' is
    encoded too so the name is never '.', '..' or hidden (staging folders start with '.'). Over-long ids keep a
    readable prefix and a hash after '%%', which percent-encoding itself never writes, so the two forms can't meet.
    """
    if not model_id:
        raise InvalidArgument("model id is empty")
    try:
        name = quote(model_id, safe="")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"model id {model_id!r} is not valid UTF-8") from exc
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > _MAX_DIR_NAME:
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:32]
        name = f"{name[:_KEEP_ON_HASH]}%%{digest}"
    return name


def check_characters(text: str, what: str) -> None:
    """Refuses NUL and control characters, which no model file needs and which hide what a name really is."""
    for char in text:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise InvalidArgument(f"{what} contains the control character {char!r}")


def relative_parts(name: str, what: str, *, allow_trailing_slash: bool = False) -> list[str]:
    """The components of a '/'-separated relative name, refusing anything that is absolute or could climb.

    `what` names the offending thing for the message, e.g. "S3 object key 'models/../x'".
    """
    check_characters(name, what)
    if not name:
        raise InvalidArgument(f"{what} is empty")
    if name.startswith("/"):
        raise InvalidArgument(f"{what} is absolute")
    if allow_trailing_slash and name.endswith("/"):
        name = name[:-1]
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            shown = "an empty" if not part else f"a '{part}'"
            raise InvalidArgument(f"{what} has {shown} path component")
    return parts


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path`, symlinks resolved, is `folder` or below it (`folder` must already be resolved)."""
    return path.resolve().is_relative_to(folder)
