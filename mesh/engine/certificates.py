"""The front doors' TLS files as the engine reads them, kept current: mesh's PEM files (certificate, key, client
CA: the same settings as mesh's own doors) copied into the engine's folder in the form HAProxy reads (chain and
key in one file), and pushed to the running engine over its runtime API when the originals change (a rotated
Secret), so new connections get the new certificate without a restart; connections open before keep theirs.
"""

from __future__ import annotations

import logging

from mesh.engine.haproxy_api import RuntimeAPI
from mesh.engine.haproxy_config import EngineFiles
from mesh.tls import ServerTLS, file_mtimes

log = logging.getLogger(__name__)


class EngineCertificates:
    def __init__(self, tls: ServerTLS, files: EngineFiles) -> None:
        self._tls = tls
        self._files = files
        self._seen = file_mtimes(tls.cert, tls.key, tls.client_ca)

    def write(self) -> None:
        """The engine's copies, from the files as they are now (before the engine starts)."""
        self._files.certificate.write_text(self._chain_and_key())
        if self._tls.client_ca is not None:
            self._files.client_ca.write_bytes(self._tls.client_ca.read_bytes())
        self._files.certificate.chmod(0o600)

    def _chain_and_key(self) -> str:
        return self._tls.cert.read_text().rstrip("\n") + "\n" + self._tls.key.read_text()

    async def reload_changed(self, api: RuntimeAPI) -> None:
        """If the files changed since the last look, hand the engine the new ones (kept as the engine's copies too,
        for its next start). A half-written rotation (unreadable files) is retried at the next look."""
        tls = self._tls
        try:
            now = file_mtimes(tls.cert, tls.key, tls.client_ca)
            if now == self._seen:
                return
            chain_and_key = self._chain_and_key()
            client_ca = tls.client_ca.read_text() if tls.client_ca is not None else None
        except OSError as exc:
            log.warning("TLS files %s unreadable, the engine keeps the current certificate: %s", tls.cert, exc)
            return
        certificate = self._files.certificate
        await api.run_with_payload(f"set ssl cert {certificate}", chain_and_key)
        await api.run(f"commit ssl cert {certificate}")
        if client_ca is not None:
            await api.run_with_payload(f"set ssl ca-file {self._files.client_ca}", client_ca)
            await api.run(f"commit ssl ca-file {self._files.client_ca}")
        self._seen = now
        self.write()
        log.info("TLS certificate %s reloaded into the data-plane engine", tls.cert)
