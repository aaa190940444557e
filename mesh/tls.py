"""TLS and mutual TLS from PEM files, for every connection mesh makes or accepts, reloaded when the files change.

Servers (the gRPC and REST front doors, runtimes' SPI) check the files' modification times at each new
handshake and use the new certificate from then on: connections open before a rotation keep theirs. Clients
(router → runtime, router → etcd) read the files when a channel is made; `ClientTLS.generation` changes when the
files do, and the owners of channels make new ones then.

mTLS: a server given a client CA requires every client to present a certificate signed by it; a client given a
certificate and key presents them.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


def file_mtimes(*paths: Path | None) -> tuple[int, ...]:
    """The files' modification times (ns); a file replaced by rename (how secrets are rotated) changes it too."""
    return tuple(os.stat(p).st_mtime_ns if p is not None else 0 for p in paths)


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key, and the CA its clients' certificates must chain to (mTLS) if any."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials that re-read the files before any handshake that follows a change."""
        lock = threading.Lock()
        seen = [file_mtimes(self.cert, self.key, self.client_ca)]

        def config() -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(self.key.read_bytes(), self.cert.read_bytes())], _read(self.client_ca)
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC's core on every new connection, so it stays cheap: three stat calls.
            with lock:
                try:
                    now = file_mtimes(self.cert, self.key, self.client_ca)
                    if now == seen[0]:
                        return None
                    fresh = config()
                except OSError as exc:  # half-written rotation: keep serving the old certificate
                    log.warning("TLS files %s unreadable, keeping the current certificate: %s", self.cert, exc)
                    return None
                seen[0] = now
                log.info("TLS certificate %s reloaded", self.cert)
                return fresh

        return grpc.dynamic_ssl_server_credentials(config(), fetch, require_client_authentication=self.mutual)

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for aiohttp; each handshake switches to a new context if the files changed."""
        holder = [self._context(), file_mtimes(self.cert, self.key, self.client_ca)]
        lock = threading.Lock()

        def on_hello(sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
            with lock:
                try:
                    now = file_mtimes(self.cert, self.key, self.client_ca)
                    if now != holder[1]:
                        holder[0], holder[1] = self._context(), now
                        log.info("TLS certificate %s reloaded", self.cert)
                except (OSError, ssl.SSLError) as exc:
                    log.warning("TLS files %s unusable, keeping the current certificate: %s", self.cert, exc)
                sock.context = holder[0]

        first = self._context()
        first.sni_callback = on_hello
        return first

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass(frozen=True)
class ClientTLS:
    """What a client trusts (a CA; None: the system's roots) and the certificate it presents for mTLS, if any."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    def generation(self) -> tuple[int, ...]:
        """Changes when any of the files does: time to make channels anew."""
        return file_mtimes(self.ca, self.cert, self.key)

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_read(self.ca), _read(self.key), _read(self.cert))


def server_tls(cert: str, key: str, client_ca: str = "") -> ServerTLS | None:
    """Server TLS from settings' file paths: None when no certificate is set; an error for half a setting."""
    if not cert and not key:
        if client_ca:
            raise ValueError("a client CA (mTLS) needs a server certificate and key too")
        return None
    if not cert or not key:
        raise ValueError("TLS needs both a certificate file and a key file")
    return ServerTLS(Path(cert), Path(key), Path(client_ca) if client_ca else None)


def client_tls(ca: str, cert: str = "", key: str = "") -> ClientTLS | None:
    """Client TLS from settings' file paths: None when none is set (plaintext)."""
    if not (ca or cert or key):
        return None
    return ClientTLS(Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None)
