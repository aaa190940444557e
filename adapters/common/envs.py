"""Virtual environments for the real model servers, made on demand: `python -m adapters.common.envs mlserver`.

Each server gets a venv of its own, apart from mesh's: their pins (protobuf, uvloop, torch) need not agree
with mesh's, just as each is its own container in a pod. The tests make them the same way (so CI installs them
from the project's own files); a stamp file records what was installed, so a venv is made once per
requirement list. A file lock keeps two processes from building one venv at the same time.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "mlserver": (
        "mlserver==1.7.1",
        "mlserver-sklearn==1.7.1",
        "mlserver-xgboost==1.7.1",
        # uvloop 0.22+ kills MLServer's inference workers ("no current event loop"; shared/research/runtimes.md).
        "uvloop==0.21.0",
        "mlserver-lightgbm==1.7.1",
        "mlserver-mlflow==1.7.1",
        # 2.x: mlserver-mlflow 1.7 was made against it (it asks for >=2.19); the test logs its model with it.
        "mlflow==2.22.5",
        "scikit-learn==1.9.1",
        "xgboost==3.2.0",
        "lightgbm==4.7.0",
    ),
    "torchserve": (
        # The CPU build that lies on this machine's disk; a bare "torch" would pull a CUDA build of several GB.
        "torch==2.13.0",
        "torchserve==0.12.0",
        "torch-model-archiver==0.12.0",
        "numpy==2.4.6",
        # TorchServe's worker imports yaml but does not declare it.
        "pyyaml==6.0.4",
    ),
    # The wheel carries tritonserver 2.51.0 (CPU, python backend only); numpy (<2 by its pin: 1.26.4) is what
    # python-backend models import, through the venv the stub runs in.
    "triton": ("nvidia-pytriton==0.7.0", "numpy"),
    # Custom models written with the KServe Python SDK run in KServe's own data plane (adapters/kserve/host.py).
    "kserve": ("kserve==0.21.0",),
}

ROOT_ENV = "MESH_RUNTIME_ENVS"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / ".runtimes"


def envs_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def env_dir(name: str) -> Path:
    return envs_root() / name


def _stamp(requirements: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([sys.version, *requirements]).encode()).hexdigest()


def ensure_env(name: str) -> Path:
    """The venv for a server, made (or remade, when its requirements changed) if needed; returns its folder."""
    requirements = REQUIREMENTS[name]
    venv = env_dir(name)
    stamp_file = venv / ".mesh-requirements"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp_file.exists() and stamp_file.read_text() == _stamp(requirements):
            return venv
        log.info("making the %s venv in %s: %s", name, venv, " ".join(requirements))
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
            check=True,
        )
        stamp_file.write_text(_stamp(requirements))
    return venv


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m adapters.common.envs", description=__doc__.splitlines()[0])
    parser.add_argument("servers", nargs="+", choices=sorted(REQUIREMENTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.servers:
        print(ensure_env(name))


if __name__ == "__main__":
    main()
