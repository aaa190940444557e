"""What can name a model or vmodel, and be a model's path: the checks every registration and lookup applies."""

from __future__ import annotations

import re

from mesh.errors import InvalidArgument

# Ids name keys in the store and appear in every log line and error about the model. Kubernetes object names are
# up to 253 characters, and modelmesh-serving's model ids add "__isvc-" and a 10-digit hash to one: 512 bytes holds
# those with room to spare.
MAX_ID_BYTES = 512
# A model path is a file path or a URL (presigned URLs run to a few KiB); PATH_MAX on Linux is 4096.
MAX_PATH_BYTES = 4096
# Unicode's Cc category: C0 controls (NUL, newline, escape...), DEL and C1 controls. They would end a path at the
# NUL for the OS, and forge or hide log lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _shown(value: str) -> str:
    """A bounded, escaped rendering of a client's string for an error message."""
    return repr(value[:64]) + ("..." if len(value) > 64 else "")


def _check_text(value: str, what: str, max_bytes: int) -> None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as err:  # only from a library caller: protobuf strings are valid UTF-8
        raise InvalidArgument(f"{what} {_shown(value)} is not valid Unicode: {err.reason}") from None
    if size > max_bytes:
        raise InvalidArgument(f"{what} is {size} bytes long; the limit is {max_bytes} bytes of UTF-8")
    control = _CONTROL.search(value)
    if control is not None:
        raise InvalidArgument(
            f"{what} {_shown(value)} contains control character U+{ord(control.group()):04X} at position "
            f"{control.start()}"
        )


def check_id(value: str, what: str) -> str:
    """`value` if it can name a model or vmodel: not empty, at most MAX_ID_BYTES of UTF-8, no control characters."""
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    _check_text(value, what, MAX_ID_BYTES)
    return value


def check_path(value: str, what: str) -> str:
    """`value` if it can be a model path: at most MAX_PATH_BYTES of UTF-8, no control characters (NUL included).

    Whether a local path stays inside the allowed roots is the puller's check, where the path is resolved.
    """
    _check_text(value, what, MAX_PATH_BYTES)
    return value
