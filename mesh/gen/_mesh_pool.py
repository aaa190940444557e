"""The descriptor pool that the generated modules in mesh.gen register into (scripts/gen_protos.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
