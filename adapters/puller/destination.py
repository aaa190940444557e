"""Where one pull writes: a fresh staging folder that every written path is checked to stay inside."""

from __future__ import annotations

import threading
from pathlib import Path

from adapters.puller.names import is_inside, relative_parts
from mesh.errors import InvalidArgument, Unavailable


class Destination:
    """Hands out checked paths inside a staging folder and totals the bytes written there.

    Also carries the pull's stop flag: every new file asks for a path first, so a cancelled or removed model
    stops being written at the next file rather than after the whole download.
    """

    def __init__(self, directory: Path, stop: threading.Event) -> None:
        self.directory = directory.resolve()
        self.size_bytes = 0
        self._stop = stop

    def check_stopped(self) -> None:
        if self._stop.is_set():
            raise Unavailable("the pull was cancelled: the model was removed or its load abandoned")

    def path_for(self, relative: str, what: str) -> Path:
        """The path to write `relative` ('/'-separated) to, with its parent folders created."""
        self.check_stopped()
        target = self.directory.joinpath(*relative_parts(relative, what))
        if not is_inside(target, self.directory):
            raise InvalidArgument(f"{what} would be written outside the model folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def folder(self, relative: str, what: str) -> Path:
        """Creates the (possibly empty) folder `relative`, e.g. for an S3 folder marker."""
        target = self.path_for(relative, what)
        target.mkdir(exist_ok=True)
        return target

    def record(self, path: Path) -> None:
        """Counts a finished file toward the model's disk size."""
        self.size_bytes += path.stat().st_size
