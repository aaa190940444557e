"""What the adapters of HTTP-managed model servers (MLServer, TorchServe, Triton) share: the management client,
calls whose transport failures are UNAVAILABLE, waiting until the server answers, and the launched server's log
read from a point (a refused load is often explained only there)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from adapters.common.model_server import ModelServer
from mesh.errors import Unavailable

CALL_TIMEOUT_S = 30.0
"""For every management call but a load, which the adapter core bounds with the load timeout."""
READY_POLL_S = 0.2


class HttpModelServer(ModelServer):
    """A ModelServer driven over an HTTP management API at `_base_url`; `server_name` names it in errors."""

    server_name = "the model server"

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url
        self._client: httpx.AsyncClient | None = None

    async def _connect(
        self, ready_path: str, deadline: float, ready: Callable[[httpx.Response], bool] = lambda r: r.is_success
    ) -> httpx.Response:
        """Open the client and poll ready_path until `ready` says so (by time.monotonic() deadline); its answer."""
        self._client = httpx.AsyncClient(base_url=self._base_url, timeout=CALL_TIMEOUT_S, trust_env=False)
        while True:
            try:
                response = await self._client.get(ready_path)
                if ready(response):
                    return response
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise Unavailable(f"{self.server_name} at {self._base_url} did not answer {ready_path} in time")
            await asyncio.sleep(READY_POLL_S)

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A management call; a server that does not answer is Unavailable, naming the call."""
        if self._client is None:
            raise Unavailable(f"{self.server_name} is not connected yet")
        try:
            return await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"{self.server_name} at {self._base_url} did not answer {method} {path}: {exc!r}"
            ) from exc

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _log_path(self) -> Path | None:
        """The log of a server this adapter launched (None: it runs apart, its log is not ours to read)."""
        return None

    def _log_size(self) -> int:
        """Where the log ends now: the point to read from after a call that may fail."""
        path = self._log_path()
        try:
            return path.stat().st_size if path else 0
        except OSError:
            return 0

    def _log_since(self, start: int) -> list[str]:
        """The log's lines written after `start` (none when there is no log to read)."""
        path = self._log_path()
        if path is None:
            return []
        try:
            with path.open("rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace").splitlines()
        except OSError:
            return []
