"""Pulls from the local filesystem (a mounted volume): checks the path, then copies the file or folder.

Files are hard-linked when source and root share a filesystem (no second copy of a large model) and copied
otherwise; never symlinked, so replacing or deleting the source can't change a loaded model underneath. (A hard
link shares its inode: a source file rewritten in place does change the pulled copy, which writers avoid by
replacing files instead.)
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from adapters.puller.destination import Destination
from adapters.puller.names import check_characters
from mesh.errors import InvalidArgument, ModelLoadFailed


def resolve_source(path_text: str, roots: Sequence[Path], puller_root: Path) -> Path:
    """The real (symlink-free) source path for `path_text`, refused unless it lies inside one of `roots`.

    `roots` and `puller_root` must already be resolved. With no roots any absolute path is allowed; a relative
    path is looked up under each root in turn (the working directory when there are none). '..' is refused
    everywhere, so a path can't be written to look as if it stays inside a root.
    """
    check_characters(path_text, f"model path {path_text!r}")
    if not path_text:
        raise InvalidArgument("model path is empty")
    if ".." in PurePosixPath(path_text).parts:
        raise InvalidArgument(f"model path {path_text!r} has a '..' component")
    given = Path(path_text)
    candidates = [given] if given.is_absolute() or not roots else [root / given for root in roots]
    for candidate in candidates:
        resolved = _real(candidate)
        if roots and not any(resolved.is_relative_to(root) for root in roots):
            allowed = ", ".join(str(root) for root in roots)
            raise InvalidArgument(
                f"model path {path_text!r} resolves to '{resolved}', outside the allowed local roots ({allowed})"
            )
        if resolved.exists():
            if puller_root.is_relative_to(resolved):
                raise InvalidArgument(f"model path {path_text!r} contains the puller's own folder '{puller_root}'")
            return resolved
    raise ModelLoadFailed(f"local model path {path_text!r} does not exist")


def copy_source(source: Path, name: str, destination: Destination) -> None:
    """Copies the file or folder `source` (already resolved) to `name` inside the destination."""
    if source.is_file():
        _copy_file(source, name, destination)
    elif source.is_dir():
        _copy_folder(source, source, name, destination, ancestors=(source,))
    else:
        raise InvalidArgument(f"local model path '{source}' is neither a regular file nor a folder")


def _copy_folder(top: Path, folder: Path, name: str, destination: Destination, ancestors: tuple[Path, ...]) -> None:
    destination.folder(name, f"local folder '{folder}'")
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            path = Path(entry.path)
            real = _real(path)
            # A link may point anywhere inside the model folder (a mounted ConfigMap is all links into '..data'),
            # but never out of it: that would copy files the model's author never put there.
            if entry.is_symlink() and not real.is_relative_to(top):
                raise InvalidArgument(f"'{path}' is a symlink to '{real}', outside the model folder '{top}'")
            if entry.is_symlink() and not real.exists():
                raise InvalidArgument(f"'{path}' in the model folder is a broken symlink (to '{real}')")
            child = f"{name}/{entry.name}"
            if real.is_dir():
                if real in ancestors:
                    raise InvalidArgument(f"'{path}' is a symlink loop back to '{real}'")
                _copy_folder(top, real, child, destination, (*ancestors, real))
            elif real.is_file():
                _copy_file(real, child, destination)
            else:  # a FIFO would block the copy forever; sockets and devices are not model files
                raise InvalidArgument(f"'{path}' in the model folder is not a regular file or folder")


def _real(path: Path) -> Path:
    """`path` with every symlink resolved; a symlink loop is the caller's mistake, not a crash."""
    try:
        return path.resolve()
    except RuntimeError as exc:  # how Python 3.11 and 3.12 report a loop
        raise InvalidArgument(f"'{path}' is in a symlink loop") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # how later versions report it
            raise InvalidArgument(f"'{path}' is in a symlink loop") from exc
        raise


def _copy_file(source: Path, name: str, destination: Destination) -> None:
    target = destination.path_for(name, f"file name {name!r} (from '{source}')")
    try:
        os.link(source, target)
    except OSError:  # another filesystem (EXDEV), or links refused (EPERM under protected_hardlinks)
        shutil.copy2(source, target)
    destination.record(target)
