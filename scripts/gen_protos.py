"""Regenerate mesh/gen/ from protos/*.proto: `python scripts/gen_protos.py` (add --check to only compare).

The generated modules register their files in a descriptor pool of mesh's own instead of protobuf's default
pool. tritonclient and the kserve SDK register `inference.*` messages in the default pool under other file
names; two files defining one symbol in one pool is an import-time error, so sharing it would make mesh
impossible to import beside them (in a test, a notebook, or a custom runtime).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
GEN_PACKAGE = "mesh/gen"
DEFAULT_POOL = "_descriptor_pool.Default()"
MESH_POOL = "_mesh_pool.POOL"
POOL_MODULE = '''"""The descriptor pool that the generated modules in mesh.gen register into (scripts/gen_protos.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every proto into out_root/mesh/gen and return the files written."""
    from grpc_tools import protoc  # only needed by developers, not at run time

    out_dir = out_root / GEN_PACKAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = protoc.__file__.rsplit("/", 1)[0] + "/_proto"
    args = [
        "protoc",
        f"-I{GEN_PACKAGE}={PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{GEN_PACKAGE}/{p.name}" for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_dir / "__init__.py").write_text('"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n')
    (out_dir / "_mesh_pool.py").write_text(POOL_MODULE)
    for pb2 in out_dir.glob("*_pb2.py"):
        text = pb2.read_text()
        if DEFAULT_POOL not in text:
            raise SystemExit(f"{pb2.name}: generated code no longer uses {DEFAULT_POOL}; update this script")
        text = text.replace(DEFAULT_POOL, MESH_POOL).replace(
            "from google.protobuf.internal import builder as _builder\n",
            "from google.protobuf.internal import builder as _builder\nfrom mesh.gen import _mesh_pool\n",
        )
        pb2.write_text(text)
    return sorted(p for p in out_dir.iterdir() if p.is_file())


def differences(committed: Path, fresh_root: Path) -> list[str]:
    """Names of files that differ between the committed mesh/gen and a fresh generation."""
    fresh = fresh_root / GEN_PACKAGE
    names = {p.name for p in committed.glob("*.py*")} | {p.name for p in fresh.glob("*.py*")}
    return sorted(
        n
        for n in names
        if not (committed / n).exists()
        or not (fresh / n).exists()
        or not filecmp.cmp(committed / n, fresh / n, shallow=False)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when mesh/gen differs from the protos")
    if parser.parse_args().check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            diff = differences(ROOT / GEN_PACKAGE, Path(tmp))
        if diff:
            print("mesh/gen is stale; run python scripts/gen_protos.py:", ", ".join(diff))
            return 1
        print("mesh/gen matches protos/")
        return 0
    for path in generate(ROOT):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
