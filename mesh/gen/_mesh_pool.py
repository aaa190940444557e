"""The descriptor pool that every generated module in mesh.gen registers into (see scripts/gen_protos.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
