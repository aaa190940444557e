"""Azurite, Azure Storage's own emulator, from the npm registry: installed on first use under .tools/azurite (the
project's pinned version, as the model servers' venvs are made), started per test module on a free port of
127.0.0.1 with nothing on disk, stopped by pid."""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VERSION = "3.37.0"
TOOLS = REPO / ".tools" / "azurite"
START_TIMEOUT_S = 30.0
# Azurite's well-known development account (public, in Azure's documentation): not a secret.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def missing() -> str | None:
    """Why Azurite cannot run here (no Node.js or npm), or None."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "Azurite needs Node.js and npm on PATH (apt-get install nodejs npm)"
    return None


def install() -> Path:
    """Azurite's blob server script, installing the pinned version once (a file lock keeps two at bay)."""
    main = TOOLS / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
    stamp = TOOLS / ".mesh-version"
    TOOLS.mkdir(parents=True, exist_ok=True)
    with open(TOOLS.parent / ".azurite.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (main.exists() and stamp.exists() and stamp.read_text() == VERSION):
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(TOOLS), f"azurite@{VERSION}"],
                check=True, capture_output=True, timeout=600,
            )  # fmt: skip
            stamp.write_text(VERSION)
    return main


class Azurite:
    """One blob server: its endpoint and the connection string of its development account. With a certificate it
    serves HTTPS and takes OAuth bearer tokens too (`--oauth basic`: a token's lifetime, issuer and audience are
    checked, not its signature; Azurite takes tokens over HTTPS only)."""

    def __init__(self, log_path: Path, tls: tuple[Path, Path] | None = None) -> None:
        main = install()
        self._log = log_path.open("w+")
        oauth = ["--cert", str(tls[0]), "--key", str(tls[1]), "--oauth", "basic"] if tls else []
        self.process = subprocess.Popen(
            ["node", str(main), "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
             "--skipApiVersionCheck", "--loose", *oauth],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while (port := self._port(log_path)) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Azurite did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{port}/{ACCOUNT}"
        key = f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY}"
        self.connection_string = f"DefaultEndpointsProtocol={scheme};{key};BlobEndpoint={self.endpoint};"

    @staticmethod
    def _port(log_path: Path) -> int | None:
        found = re.search(r"successfully listens on https?://127\.0\.0\.1:(\d+)", log_path.read_text())
        return int(found.group(1)) if found else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            # Node waits for its clients' keep-alive connections to close first; nothing on disk needs the wait.
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._log.close()
